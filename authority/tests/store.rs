//! The membership store's behaviour, pinned on both databases: every scenario below runs
//! once on a fresh SQLite file and once on a fresh PostgreSQL database (DESIGN §5: same
//! migrations, same behaviour, same test suite).
//!
//! The PostgreSQL half needs a server: `KITH_TEST_POSTGRES_URL` names a role that may
//! create databases (each test makes its own and drops it). `eval "$(bash .ci/postgres)"`
//! starts one and sets the variable. Without it those tests fail; they never skip silently.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kith_authority::store::{
    AuditEvent, DecideError, Decision, FeedEntry, FeedKind, FileError, Filed, JoinLimits,
    JoinRecord, JoinState, Member, MembershipStore, NewJoinRequest, NewTicket, PageKey,
    RedeemError, RuleRecord, StampOrigin, StoreError, StoreOwner,
};
use kith_identity::Identifier;
use sha2::{Digest, Sha256};
use sqlx::{Connection, Executor, PgConnection, Row, SqliteConnection};
use tempfile::TempDir;
use tokio::sync::Barrier;
use tokio::task::JoinSet;

#[path = "../../integration-tests/src/postgres.rs"]
mod temp_postgres;
use temp_postgres::TempDatabase;

/// An arbitrary fixed "now" (November 2023), so that expiry is under the test's control.
const NOW: u64 = 1_700_000_000;

/// One hour, in seconds: the lifetime of the tickets the tests make.
const HOUR: u64 = 3600;

/// 200: how many identities redeem one ticket at once in the concurrency tests.
const REDEEMERS: usize = 200;

/// 60 s: bounds a concurrency test that would otherwise hang; a pass takes about a second.
const CONCURRENCY_LIMIT: Duration = Duration::from_secs(60);

// ---- the scenarios ------------------------------------------------------------------------

async fn tickets_are_created_listed_and_revoked(db: &TestDb) {
    let store = db.open().await;
    let admin = identifier();
    let (_, first_hash) = code();
    let (_, second_hash) = code();
    let first = new_ticket("aaaaaaaaaaaa", first_hash, 1, &admin);
    let mut second = new_ticket("bbbbbbbbbbbb", second_hash, 3, &admin);
    second.attributes.insert("role".into(), "enroller".into());
    store.create_ticket(&first, NOW).await.unwrap();
    store.create_ticket(&second, NOW + 1).await.unwrap();

    let tickets = store.list_tickets().await.unwrap();
    assert_eq!(tickets.len(), 2);
    let [a, b] = [&tickets[0], &tickets[1]];
    assert_eq!(
        (a.id.as_str(), a.usage_count, a.uses_left, a.created_at),
        ("aaaaaaaaaaaa", 1, 1, NOW)
    );
    assert_eq!(a.expires_at, NOW + HOUR);
    assert_eq!(a.created_by, admin);
    assert_eq!(a.revoked_at, None);
    assert_eq!(a.attributes, first.attributes);
    assert_eq!(
        (b.id.as_str(), b.usage_count, b.uses_left, b.created_at),
        ("bbbbbbbbbbbb", 3, 3, NOW + 1)
    );
    assert_eq!(b.attributes, second.attributes);

    let revoked = store
        .revoke_ticket("bbbbbbbbbbbb", &admin, NOW + 10)
        .await
        .unwrap()
        .expect("the ticket exists");
    assert_eq!(revoked.revoked_at, Some(NOW + 10));
    assert_eq!(revoked.uses_left, 3);
    // Revoking again changes nothing: the first revocation time stays.
    let again = store
        .revoke_ticket("bbbbbbbbbbbb", &admin, NOW + 20)
        .await
        .unwrap()
        .expect("the ticket exists");
    assert_eq!(again.revoked_at, Some(NOW + 10));
    assert!(
        store
            .revoke_ticket("cccccccccccc", &admin, NOW + 20)
            .await
            .unwrap()
            .is_none()
    );
    let tickets = store.list_tickets().await.unwrap();
    assert_eq!(tickets[0].revoked_at, None);
    assert_eq!(tickets[1].revoked_at, Some(NOW + 10));

    let audit = store.audit_log(100).await.unwrap();
    let actions: Vec<_> = audit
        .iter()
        .map(|e| (e.action.as_str(), e.subject.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            (AuditEvent::TICKET_CREATED, "aaaaaaaaaaaa"),
            (AuditEvent::TICKET_CREATED, "bbbbbbbbbbbb"),
            (AuditEvent::TICKET_REVOKED, "bbbbbbbbbbbb"),
        ]
    );
    assert!(audit.iter().all(|e| e.actor == admin.to_string()));
    assert_eq!(audit[2].at, NOW + 10);
    assert!(
        audit[1]
            .detail
            .contains(r#"attributes={"role":"enroller"}"#)
    );
    assert!(audit[1].detail.contains("usage_count=3"));
    store.close().await;
}

async fn unusable_or_duplicate_tickets_are_refused(db: &TestDb) {
    let store = db.open().await;
    let admin = identifier();
    let (_, hash) = code();
    store
        .create_ticket(&new_ticket("dup", hash, 1, &admin), NOW)
        .await
        .unwrap();
    // The same id again, and (impossible for random codes, but the schema says so) the same
    // code under another id.
    let (_, other_hash) = code();
    for ticket in [
        new_ticket("dup", other_hash, 1, &admin),
        new_ticket("other", hash, 1, &admin),
    ] {
        match store.create_ticket(&ticket, NOW).await {
            Err(StoreError::TicketExists { id }) => assert_eq!(id, ticket.id),
            other => panic!("expected TicketExists, got {other:?}"),
        }
    }
    let mut zero_uses = new_ticket("zero", code().1, 1, &admin);
    zero_uses.usage_count = 0;
    let mut born_expired = new_ticket("late", code().1, 1, &admin);
    born_expired.expires_at = NOW;
    for ticket in [
        zero_uses,
        born_expired,
        new_ticket("", code().1, 1, &admin),
        new_ticket("has space", code().1, 1, &admin),
        new_ticket(&"x".repeat(65), code().1, 1, &admin),
    ] {
        match store.create_ticket(&ticket, NOW).await {
            Err(e @ StoreError::InvalidTicket { .. }) => {
                assert!(e.to_string().starts_with("cannot store ticket"), "{e}")
            }
            other => panic!("expected InvalidTicket for {ticket:?}, got {other:?}"),
        }
    }
    // Nothing refused was stored or audited.
    assert_eq!(store.list_tickets().await.unwrap().len(), 1);
    assert_eq!(store.audit_log(100).await.unwrap().len(), 1);
    store.close().await;
}

async fn redeeming_a_ticket_adds_the_member_and_audits_it(db: &TestDb) {
    let store = db.open().await;
    let admin = identifier();
    let newcomer = identifier();
    let (_, hash) = code();
    let mut ticket = new_ticket("t1", hash, 2, &admin);
    ticket.attributes = attributes(&[("role", "member"), ("ockam-relay", "n1")]);
    store.create_ticket(&ticket, NOW).await.unwrap();

    let redeemed = store
        .redeem_ticket(&hash, &newcomer, false, NOW + 5)
        .await
        .unwrap();
    assert_eq!(redeemed.ticket_id, "t1");
    assert_eq!(redeemed.attributes, ticket.attributes);

    let member = store
        .member(&newcomer)
        .await
        .unwrap()
        .expect("a member now");
    assert_eq!(member.identifier, newcomer);
    assert_eq!(member.attributes, ticket.attributes);
    assert_eq!(member.added_at, NOW + 5);
    // On whose authority: the ticket's creator; how: the ticket.
    assert_eq!(member.added_by, admin);
    assert_eq!(member.via, "ticket:t1");
    assert_eq!(store.members().await.unwrap(), [member]);
    assert_eq!(store.list_tickets().await.unwrap()[0].uses_left, 1);

    let audit = store.audit_log(100).await.unwrap();
    let [_, redeemed_event, added_event] = audit.as_slice() else {
        panic!("expected created, redeemed, added: {audit:?}");
    };
    assert_eq!(redeemed_event.action, AuditEvent::TICKET_REDEEMED);
    assert_eq!(redeemed_event.subject, "t1");
    assert_eq!(redeemed_event.actor, newcomer.to_string());
    assert_eq!(redeemed_event.at, NOW + 5);
    assert!(redeemed_event.detail.contains("uses_left=1"));
    assert_eq!(added_event.action, AuditEvent::MEMBER_ADDED);
    assert_eq!(added_event.subject, newcomer.to_string());
    assert_eq!(
        added_event.detail,
        r#"via=ticket:t1 attributes={"ockam-relay":"n1","role":"member"}"#
    );
    store.close().await;
}

async fn each_refusal_is_distinct(db: &TestDb) {
    let store = db.open().await;
    let admin = identifier();
    let redeemer = identifier();
    let (_, expired) = code();
    let (_, revoked) = code();
    let (_, used_up) = code();
    let (_, revoked_and_expired) = code();
    store
        .create_ticket(&new_ticket("expired", expired, 1, &admin), NOW)
        .await
        .unwrap();
    store
        .create_ticket(&new_ticket("revoked", revoked, 1, &admin), NOW)
        .await
        .unwrap();
    store
        .create_ticket(&new_ticket("usedup", used_up, 2, &admin), NOW)
        .await
        .unwrap();
    store
        .create_ticket(&new_ticket("both", revoked_and_expired, 1, &admin), NOW)
        .await
        .unwrap();
    store
        .revoke_ticket("revoked", &admin, NOW + 1)
        .await
        .unwrap();
    store.revoke_ticket("both", &admin, NOW + 2).await.unwrap();
    for _ in 0..2 {
        store
            .redeem_ticket(&used_up, &identifier(), false, NOW + 3)
            .await
            .unwrap();
    }
    let audit_before = store.audit_log(1000).await.unwrap().len();
    let members_before = store.members().await.unwrap().len();

    // At the very second it expires, a ticket is expired.
    let at = NOW + HOUR;
    let mut messages = BTreeSet::new();
    let unknown = store
        .redeem_ticket(&code().1, &redeemer, false, NOW + 4)
        .await;
    assert!(matches!(unknown, Err(RedeemError::Unknown)), "{unknown:?}");
    messages.insert(unknown.unwrap_err().to_string());
    let outcome = store.redeem_ticket(&expired, &redeemer, false, at).await;
    assert!(
        matches!(outcome, Err(RedeemError::Expired { expires_at }) if expires_at == NOW + HOUR),
        "{outcome:?}"
    );
    messages.insert(outcome.unwrap_err().to_string());
    let outcome = store
        .redeem_ticket(&revoked, &redeemer, false, NOW + 4)
        .await;
    assert!(
        matches!(outcome, Err(RedeemError::Revoked { at }) if at == NOW + 1),
        "{outcome:?}"
    );
    messages.insert(outcome.unwrap_err().to_string());
    let outcome = store
        .redeem_ticket(&used_up, &redeemer, false, NOW + 4)
        .await;
    assert!(
        matches!(outcome, Err(RedeemError::UsedUp { usage_count: 2 })),
        "{outcome:?}"
    );
    messages.insert(outcome.unwrap_err().to_string());
    // An admin's revocation is the reason given, even once the ticket has expired too.
    let outcome = store
        .redeem_ticket(&revoked_and_expired, &redeemer, false, at + 1)
        .await;
    assert!(
        matches!(outcome, Err(RedeemError::Revoked { at }) if at == NOW + 2),
        "{outcome:?}"
    );
    // Four refusals, four different messages, each saying what to do.
    assert_eq!(messages.len(), 4, "{messages:?}");
    assert!(messages.iter().all(|m| m.contains("ask an admin")));

    // A refusal writes nothing.
    assert_eq!(store.audit_log(1000).await.unwrap().len(), audit_before);
    assert_eq!(store.members().await.unwrap().len(), members_before);
    assert!(store.member(&redeemer).await.unwrap().is_none());
    store.close().await;
}

async fn usage_count_one_enrolls_exactly_one_of_200(db: &TestDb) {
    let store = db.open().await;
    enrolls_exactly(std::slice::from_ref(&store), 1).await;
    store.close().await;
}

async fn usage_count_five_enrolls_exactly_five_of_200(db: &TestDb) {
    let store = db.open().await;
    enrolls_exactly(std::slice::from_ref(&store), 5).await;
    store.close().await;
}

async fn two_processes_sharing_one_database_enroll_exactly_one_of_200(db: &TestDb) {
    let stores = [db.open().await, db.open().await];
    enrolls_exactly(&stores, 1).await;
    for store in stores {
        store.close().await;
    }
}

async fn two_processes_sharing_one_database_enroll_exactly_five_of_200(db: &TestDb) {
    let stores = [db.open().await, db.open().await];
    enrolls_exactly(&stores, 5).await;
    for store in stores {
        store.close().await;
    }
}

async fn the_database_never_holds_the_code(db: &TestDb) {
    let store = db.open().await;
    let admin = identifier();
    let (code, hash) = code();
    store
        .create_ticket(&new_ticket("secret", hash, 2, &admin), NOW)
        .await
        .unwrap();
    store
        .redeem_ticket(&hash, &identifier(), false, NOW + 1)
        .await
        .unwrap();
    // Nor does anything the store hands out.
    let shown = format!(
        "{:?}{:?}{:?}",
        store.list_tickets().await.unwrap(),
        store.members().await.unwrap(),
        store.audit_log(100).await.unwrap()
    );
    store.close().await;

    let contents = db.contents().await;
    assert!(
        find(&contents, kith_identity::hex::encode(&hash).as_bytes()),
        "the test must see the stored hash, or it proves nothing"
    );
    for form in [
        code.to_vec(),
        kith_identity::hex::encode(&code).into_bytes(),
        kith_identity::hex::encode(&code)
            .to_uppercase()
            .into_bytes(),
        URL_SAFE_NO_PAD.encode(code).into_bytes(),
    ] {
        assert!(!find(&contents, &form), "the database holds the code");
        assert!(!find(shown.as_bytes(), &form));
    }
    assert!(!find(
        shown.as_bytes(),
        kith_identity::hex::encode(&hash).as_bytes()
    ));
}

async fn everything_survives_close_and_reopen(db: &TestDb) {
    let store = db.open().await;
    let admin = identifier();
    let (_, hash) = code();
    store
        .create_ticket(&new_ticket("keep", hash, 3, &admin), NOW)
        .await
        .unwrap();
    store
        .redeem_ticket(&hash, &identifier(), false, NOW + 1)
        .await
        .unwrap();
    store
        .add_member(&admin_member(&identifier(), &admin), &admin, NOW + 2)
        .await
        .unwrap();
    let tickets = store.list_tickets().await.unwrap();
    let members = store.members().await.unwrap();
    let audit = store.audit_log(100).await.unwrap();
    store.close().await;
    assert!(
        store.members().await.is_err(),
        "a closed store refuses work"
    );

    let reopened = db.open().await;
    assert_eq!(reopened.list_tickets().await.unwrap(), tickets);
    assert_eq!(reopened.members().await.unwrap(), members);
    assert_eq!(reopened.audit_log(100).await.unwrap(), audit);
    // And it keeps working where it left off.
    reopened
        .redeem_ticket(&hash, &identifier(), false, NOW + 3)
        .await
        .unwrap();
    assert_eq!(reopened.list_tickets().await.unwrap()[0].uses_left, 1);
    assert_eq!(
        reopened.audit_log(100).await.unwrap().len(),
        audit.len() + 2
    );
    reopened.close().await;
}

async fn corrupt_rows_are_errors_not_panics(db: &TestDb) {
    let store = db.open().await;
    let admin = identifier();
    let member = identifier();
    let (_, hash) = code();
    store
        .create_ticket(&new_ticket("bad", hash, 2, &admin), NOW)
        .await
        .unwrap();
    store
        .add_member(&admin_member(&member, &admin), &admin, NOW)
        .await
        .unwrap();

    db.execute("UPDATE tickets SET attributes = '{\"role\": ' WHERE id = 'bad'")
        .await;
    db.execute("UPDATE members SET attributes = '[\"not\", \"a map\"]'")
        .await;
    match store.list_tickets().await {
        Err(e @ StoreError::Corrupt { .. }) => {
            assert!(
                e.to_string().contains("attributes of ticket \"bad\""),
                "{e}"
            )
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(matches!(
        store.members().await,
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        store.member(&member).await,
        Err(StoreError::Corrupt { .. })
    ));
    // Redeeming a corrupt ticket fails, and gives back the use it took.
    let outcome = store
        .redeem_ticket(&hash, &identifier(), false, NOW + 1)
        .await;
    assert!(
        matches!(outcome, Err(RedeemError::Store(StoreError::Corrupt { .. }))),
        "{outcome:?}"
    );
    assert_eq!(db.scalar("SELECT uses_left FROM tickets").await, 2);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM audit").await, 2);

    // Other columns: an identifier that is not one, a time that is negative.
    db.execute(
        "UPDATE tickets SET attributes = '{}', created_by = 'Inot-an-identifier' WHERE id = 'bad'",
    )
    .await;
    assert!(matches!(
        store.list_tickets().await,
        Err(StoreError::Corrupt { .. })
    ));
    db.execute(&format!(
        "UPDATE tickets SET created_by = '{admin}', expires_at = -1 WHERE id = 'bad'"
    ))
    .await;
    assert!(matches!(
        store.list_tickets().await,
        Err(StoreError::Corrupt { .. })
    ));
    store.close().await;
}

async fn members_are_added_replaced_and_deleted(db: &TestDb) {
    let store = db.open().await;
    let admin = identifier();
    let alice = identifier();
    let bob = identifier();
    let mut alice_member = admin_member(&alice, &admin);
    store.add_member(&alice_member, &admin, NOW).await.unwrap();
    let mut bob_member = admin_member(&bob, &admin);
    bob_member.added_at = NOW + 1;
    store
        .add_member(&bob_member, &admin, NOW + 1)
        .await
        .unwrap();
    assert_eq!(
        store.members().await.unwrap(),
        [alice_member.clone(), bob_member.clone()]
    );

    // Adding again replaces, and the change of attributes is in the feed.
    alice_member.attributes = attributes(&[("role", "enroller")]);
    alice_member.added_at = NOW + 2;
    store
        .add_member(&alice_member, &admin, NOW + 2)
        .await
        .unwrap();
    alice_member.changed_at = Some(NOW + 2);
    assert_eq!(
        store.member(&alice).await.unwrap(),
        Some(alice_member.clone())
    );
    assert_eq!(store.members().await.unwrap().len(), 2);

    assert_eq!(
        store.delete_member(&alice, &admin, NOW + 3).await.unwrap(),
        Some(alice_member)
    );
    assert_eq!(
        store.delete_member(&alice, &admin, NOW + 4).await.unwrap(),
        None
    );
    assert_eq!(store.member(&alice).await.unwrap(), None);
    assert_eq!(store.members().await.unwrap(), [bob_member]);

    let audit = store.audit_log(100).await.unwrap();
    let actions: Vec<_> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            AuditEvent::MEMBER_ADDED,
            AuditEvent::MEMBER_ADDED,
            AuditEvent::MEMBER_ADDED,
            AuditEvent::MEMBER_DELETED,
        ]
    );
    let deleted = &audit[3];
    assert_eq!(
        (deleted.at, deleted.actor.clone(), deleted.subject.clone()),
        (NOW + 3, admin.to_string(), alice.to_string())
    );
    assert_eq!(
        deleted.detail,
        r#"via=admin attributes={"role":"enroller"}"#
    );
    store.close().await;
}

async fn the_audit_log_returns_the_newest_events_last(db: &TestDb) {
    let store = db.open().await;
    let admin = identifier();
    for i in 0..10u64 {
        let mut member = admin_member(&identifier(), &admin);
        member.added_at = NOW + i;
        store.add_member(&member, &admin, NOW + i).await.unwrap();
    }
    let newest = store.audit_log(3).await.unwrap();
    let times: Vec<_> = newest.iter().map(|e| e.at).collect();
    assert_eq!(times, [NOW + 7, NOW + 8, NOW + 9]);
    assert_eq!(store.audit_log(100).await.unwrap().len(), 10);
    assert!(store.audit_log(0).await.unwrap().is_empty());
    store.close().await;
}

async fn processes_creating_one_store_at_once_all_migrate_and_one_of_them_stamps_it(db: &TestDb) {
    let mut creating = JoinSet::new();
    for i in 0..4 {
        let location = db.location();
        creating.spawn(async move {
            let owner = StoreOwner {
                project_id: format!("project-{i}"),
                authority: None,
            };
            MembershipStore::create(&location, &owner, NOW).await
        });
    }
    let mut created = Vec::new();
    while let Some(outcome) = creating.join_next().await {
        match outcome.unwrap() {
            Ok(store) => created.push(store),
            Err(StoreError::Occupied { .. }) => {}
            Err(other) => panic!("a creator failed otherwise than refused: {other:?}"),
        }
    }
    assert_eq!(created.len(), 1, "exactly one process creates the store");
    let store = created.remove(0);
    let stamp = store.project().await.unwrap();
    assert_eq!(stamp.origin, StampOrigin::Created);
    // The project it created is the one every later opening finds.
    let owner = StoreOwner {
        project_id: stamp.project_id.clone(),
        authority: None,
    };
    let reopened = MembershipStore::open(&db.location(), &owner, NOW)
        .await
        .unwrap();
    let admin = identifier();
    reopened
        .add_member(&admin_member(&identifier(), &admin), &admin, NOW)
        .await
        .unwrap();
    assert_eq!(store.members().await.unwrap().len(), 1);
    reopened.close().await;
    store.close().await;
}

async fn both_databases_have_the_same_columns(db: &TestDb) {
    db.open().await.close().await;
    let expected: [(&str, &[(&str, bool)]); 8] = [
        (
            "tickets",
            &[
                ("id", true),
                ("code_hash", true),
                ("attributes", true),
                ("usage_count", true),
                ("uses_left", true),
                ("created_at", true),
                ("expires_at", true),
                ("created_by", true),
                ("revoked_at", false),
            ],
        ),
        (
            "members",
            &[
                ("identifier", true),
                ("attributes", true),
                ("added_at", true),
                ("added_by", true),
                ("via", true),
                ("credential_ttl", false),
                ("changed_at", false),
            ],
        ),
        (
            "membership_feed",
            &[
                ("seq", true),
                ("subject", true),
                ("at", true),
                ("kind", true),
                ("actor", true),
            ],
        ),
        (
            "redemptions",
            &[
                ("code_hash", true),
                ("member", true),
                ("ticket_id", true),
                ("at", true),
            ],
        ),
        (
            "audit",
            &[
                ("seq", true),
                ("at", true),
                ("actor", true),
                ("action", true),
                ("subject", true),
                ("detail", true),
            ],
        ),
        (
            "join_requests",
            &[
                ("id", true),
                ("requester", true),
                ("source", true),
                ("attributes", true),
                ("lifetime", true),
                ("note", true),
                ("code", true),
                ("created_at", true),
                ("expires_at", true),
                ("state", true),
                ("decided_at", false),
                ("decided_by", false),
                ("reason", false),
                ("granted_attributes", false),
                ("granted_lifetime", false),
            ],
        ),
        (
            "project_stamp",
            &[
                ("id", true),
                ("project_id", true),
                ("created_at", true),
                ("authority", false),
                ("origin", true),
            ],
        ),
        (
            "auto_approve_rules",
            &[
                ("id", true),
                ("netblock", true),
                ("attributes", true),
                ("max_credential_lifetime", true),
                ("created_at", true),
                ("created_by", true),
                ("expires_at", true),
            ],
        ),
    ];
    for (table, columns) in expected {
        let want: Vec<(String, bool)> = columns
            .iter()
            .map(|(name, not_null)| (name.to_string(), *not_null))
            .collect();
        assert_eq!(db.columns(table).await, want, "columns of {table}");
    }
}

async fn a_walk_over_member_pages_sees_every_member_once_in_order_despite_inserts(db: &TestDb) {
    let store = db.open().await;
    let admin = identifier();
    // 25 members over 3 seconds, several added in the same second: the page key is
    // (added_at, identifier), never an offset.
    let mut existing = Vec::new();
    for i in 0..25u64 {
        let mut member = admin_member(&identifier(), &admin);
        member.added_at = NOW + i / 10;
        store
            .add_member(&member, &admin, member.added_at)
            .await
            .unwrap();
        existing.push(member);
    }
    existing.sort_by(|a, b| {
        (a.added_at, a.identifier.to_string()).cmp(&(b.added_at, b.identifier.to_string()))
    });
    let mut seen = Vec::new();
    let mut after: Option<PageKey> = None;
    let mut pages = 0;
    loop {
        let page = store.members_page(after.as_ref(), 4).await.unwrap();
        assert!(page.len() <= 4);
        pages += 1;
        // Between the first pages, members join: later ones (seen at the end of the
        // walk), and one added in the first second, which sorts wherever its identifier
        // falls and so may or may not be seen; either way no existing member moves.
        if pages <= 3 {
            let mut late = admin_member(&identifier(), &admin);
            late.added_at = NOW + 100 + pages;
            store
                .add_member(&late, &admin, late.added_at)
                .await
                .unwrap();
            let mut early = admin_member(&identifier(), &admin);
            early.added_at = NOW;
            store.add_member(&early, &admin, NOW).await.unwrap();
        }
        let Some(last) = page.last() else { break };
        after = Some(PageKey {
            at: last.added_at,
            key: last.identifier.to_string(),
        });
        seen.extend(page);
        if pages > 100 {
            panic!("the walk does not end");
        }
    }
    let seen_existing: Vec<_> = seen
        .iter()
        .filter(|m| existing.contains(m))
        .cloned()
        .collect();
    assert_eq!(
        seen.iter().filter(|m| m.added_at >= NOW + 100).count(),
        3,
        "every later member is seen"
    );
    assert_eq!(
        seen_existing, existing,
        "every member that existed, once, in order"
    );
    let mut keys: Vec<_> = seen.iter().map(|m| m.identifier.to_string()).collect();
    keys.dedup();
    assert_eq!(keys.len(), seen.len(), "no member twice");
    // The cursor a client gets names the same place.
    let key = PageKey {
        at: 7,
        key: "I00ff".into(),
    };
    assert_eq!(PageKey::from_cursor(&key.to_cursor()), Some(key));
    for bad in ["", "7", ".I00", "x.I00", "7.", "7.a b", "7.a'--"] {
        assert_eq!(PageKey::from_cursor(bad), None, "{bad:?}");
    }
}

async fn a_walk_over_pending_request_pages_sees_each_once(db: &TestDb) {
    let store = db.open().await;
    let mut filed = Vec::new();
    for i in 0..9u64 {
        let id = format!("req{i}");
        let request = join_request(&id, &identifier(), &format!("10.0.0.{i}"));
        file(&store, &request, LIMITS, NOW + i / 3).await.unwrap();
        filed.push(id);
    }
    let mut seen = Vec::new();
    let mut after: Option<PageKey> = None;
    loop {
        let page = store
            .join_requests_page(false, NOW + 5, after.as_ref(), 2)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(PageKey {
            at: last.created_at,
            key: last.id.clone(),
        });
        seen.extend(page.into_iter().map(|r| r.id));
    }
    let mut expected = store
        .join_requests(false, NOW + 5)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect::<Vec<_>>();
    assert_eq!(seen, expected);
    expected.sort();
    filed.sort();
    assert_eq!(expected, filed);
}

/// Run the same scenarios on each database, as `sqlite::<name>` and `postgres::<name>`.
macro_rules! on_both_databases {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    super::TestDb::run_on_sqlite(super::$scenario).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    super::TestDb::run_on_postgres(super::$scenario).await;
                }
            )*
        }
    };
}

on_both_databases!(
    tickets_are_created_listed_and_revoked,
    unusable_or_duplicate_tickets_are_refused,
    redeeming_a_ticket_adds_the_member_and_audits_it,
    each_refusal_is_distinct,
    usage_count_one_enrolls_exactly_one_of_200,
    usage_count_five_enrolls_exactly_five_of_200,
    two_processes_sharing_one_database_enroll_exactly_one_of_200,
    two_processes_sharing_one_database_enroll_exactly_five_of_200,
    the_database_never_holds_the_code,
    everything_survives_close_and_reopen,
    corrupt_rows_are_errors_not_panics,
    members_are_added_replaced_and_deleted,
    the_audit_log_returns_the_newest_events_last,
    processes_creating_one_store_at_once_all_migrate_and_one_of_them_stamps_it,
    both_databases_have_the_same_columns,
    a_join_request_is_filed_listed_and_audited,
    filing_again_keeps_the_id_and_creation_and_updates_the_code,
    a_taken_request_id_is_refused,
    the_per_source_cap_admits_five_and_refuses_the_sixth,
    the_total_cap_does_not_count_expired_requests,
    expired_requests_are_marked_once_and_audited,
    approving_makes_the_requester_a_member_with_the_granted_lifetime,
    a_decision_with_a_stale_code_is_refused_and_the_request_stays_pending,
    denying_records_the_reason_and_adds_no_member,
    a_decided_or_expired_request_cannot_be_decided,
    corrupt_join_requests_are_errors_not_panics,
    rules_are_added_listed_until_they_expire_and_deleted,
    twenty_filings_at_once_from_one_source_file_exactly_five,
    one_requester_filing_ten_times_at_once_has_one_request,
    a_bulk_denial_denies_what_it_picks_oldest_first_audited_once,
    a_bulk_denial_racing_approvals_decides_each_request_once,
    an_appended_audit_event_reads_back_as_written,
    a_walk_over_member_pages_sees_every_member_once_in_order_despite_inserts,
    a_walk_over_pending_request_pages_sees_each_once,
    the_feed_numbers_deletions_and_changes_in_commit_order_and_pages,
    refused_or_rolled_back_changes_append_nothing_to_the_feed,
    changed_at_is_the_latest_feed_entry_and_outlives_a_deletion,
    changes_in_one_second_void_every_credential_issued_after_the_one_before,
    re_enrolling_adds_the_tickets_attributes_and_replace_replaces_them,
    a_retried_redemption_succeeds_after_the_ticket_is_used_up_without_a_use,
    a_redemption_after_the_member_was_deleted_spends_a_use,
    concurrent_redemptions_and_retries_never_take_more_than_the_usage_count,
);

// ---- membership changes: the feed, updates, re-enrollment, retries -----------------------

async fn the_feed_numbers_deletions_and_changes_in_commit_order_and_pages(db: &TestDb) {
    let store = db.open().await;
    let admin = identifier();
    let [a, b, c] = [identifier(), identifier(), identifier()];
    assert_eq!(store.feed_head().await.unwrap(), 0);
    assert!(store.feed_page(0, 10).await.unwrap().is_empty());
    for m in [a, b, c] {
        store
            .add_member(&admin_member(&m, &admin), &admin, NOW)
            .await
            .unwrap();
    }
    // Adding new members changes nothing that nodes must know.
    assert_eq!(store.feed_head().await.unwrap(), 0);

    let set = attributes(&[("component", "web")]);
    let change = store
        .update_member(&a, &set, &BTreeSet::new(), &admin, NOW + 1)
        .await
        .unwrap()
        .expect("a is a member");
    assert_eq!(change.before.attributes, attributes(&[("role", "member")]));
    assert_eq!(
        change.after.attributes,
        attributes(&[("component", "web"), ("role", "member")])
    );
    store.delete_member(&b, &admin, NOW + 2).await.unwrap();
    // A ticket that changes c's attributes, redeemed by c.
    let (_, hash) = code();
    let mut ticket = new_ticket("t", hash, 1, &admin);
    ticket.attributes = attributes(&[("role", "enroller")]);
    store.create_ticket(&ticket, NOW).await.unwrap();
    store
        .redeem_ticket(&hash, &c, false, NOW + 3)
        .await
        .unwrap();
    let removed: BTreeSet<String> = ["component".to_owned()].into();
    store
        .update_member(&a, &BTreeMap::new(), &removed, &admin, NOW + 4)
        .await
        .unwrap();

    let want = [
        (1, a, NOW + 1, FeedKind::Changed, admin),
        (2, b, NOW + 2, FeedKind::Revoked, admin),
        (3, c, NOW + 3, FeedKind::Changed, c),
        (4, a, NOW + 4, FeedKind::Changed, admin),
    ]
    .map(|(seq, subject, at, kind, actor)| FeedEntry {
        seq,
        subject,
        at,
        kind,
        actor,
    });
    assert_eq!(store.feed_head().await.unwrap(), 4);
    assert_eq!(store.feed_page(0, 100).await.unwrap(), want);
    assert_eq!(store.feed_page(0, 2).await.unwrap(), want[..2]);
    assert_eq!(store.feed_page(2, 2).await.unwrap(), want[2..]);
    assert_eq!(store.feed_page(3, 100).await.unwrap(), want[3..]);
    assert!(store.feed_page(4, 100).await.unwrap().is_empty());
    assert_eq!(FeedKind::Revoked.as_str(), "revoked");
    assert_eq!(FeedKind::parse("changed"), Some(FeedKind::Changed));
    assert_eq!(FeedKind::parse("Changed"), None);

    // The update is audited with its actor and both sets of attributes.
    let audit = store.audit_log(100).await.unwrap();
    let updated: Vec<_> = audit
        .iter()
        .filter(|e| e.action == AuditEvent::MEMBER_UPDATED)
        .collect();
    assert_eq!(updated.len(), 2);
    assert_eq!(updated[0].actor, admin.to_string());
    assert_eq!(updated[0].subject, a.to_string());
    assert_eq!(
        updated[0].detail,
        r#"before={"role":"member"} after={"component":"web","role":"member"}"#
    );

    store.close().await;
}

async fn refused_or_rolled_back_changes_append_nothing_to_the_feed(db: &TestDb) {
    let store = db.open().await;
    let admin = identifier();
    let member = identifier();
    store
        .add_member(&admin_member(&member, &admin), &admin, NOW)
        .await
        .unwrap();
    let stranger = identifier();
    let none = BTreeSet::new();
    let same = attributes(&[("role", "member")]);
    // Not a member: nothing to delete or update.
    assert_eq!(
        store.delete_member(&stranger, &admin, NOW).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .update_member(&stranger, &same, &none, &admin, NOW)
            .await
            .unwrap(),
        None
    );
    // An update that changes nothing writes nothing, not even an audit event.
    let change = store
        .update_member(&member, &same, &["absent".to_owned()].into(), &admin, NOW)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(change.before, change.after);
    // Re-enrolling with the attributes it has changes nothing either.
    let (_, hash) = code();
    let mut ticket = new_ticket("same", hash, 1, &admin);
    ticket.attributes = same.clone();
    store.create_ticket(&ticket, NOW).await.unwrap();
    let redeemed = store
        .redeem_ticket(&hash, &member, false, NOW + 1)
        .await
        .unwrap();
    assert_eq!(redeemed.before, Some(same.clone()));
    // A refused redemption by a member writes nothing.
    let refused = store
        .redeem_ticket(&hash, &identifier(), true, NOW + 2)
        .await;
    assert!(
        matches!(refused, Err(RedeemError::UsedUp { .. })),
        "{refused:?}"
    );
    assert_eq!(store.feed_head().await.unwrap(), 0);
    assert_eq!(
        store.member(&member).await.unwrap().unwrap().changed_at,
        None
    );

    // A change whose transaction fails after the feed entry is written leaves no entry:
    // the audit event that follows it is made to fail.
    db.fail_audit_action(AuditEvent::MEMBER_UPDATED).await;
    let failed = store
        .update_member(&member, &attributes(&[("x", "1")]), &none, &admin, NOW + 3)
        .await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(store.feed_head().await.unwrap(), 0);
    let unchanged = store.member(&member).await.unwrap().unwrap();
    assert_eq!((unchanged.attributes, unchanged.changed_at), (same, None));
    store.close().await;
}

async fn changed_at_is_the_latest_feed_entry_and_outlives_a_deletion(db: &TestDb) {
    let store = db.open().await;
    let admin = identifier();
    let m = identifier();
    store
        .add_member(&admin_member(&m, &admin), &admin, NOW)
        .await
        .unwrap();
    let changed_at = async || store.member(&m).await.unwrap().map(|m| m.changed_at);
    assert_eq!(changed_at().await, Some(None));
    store
        .update_member(
            &m,
            &attributes(&[("a", "1")]),
            &BTreeSet::new(),
            &admin,
            NOW + 1,
        )
        .await
        .unwrap();
    assert_eq!(changed_at().await, Some(Some(NOW + 1)));
    store.delete_member(&m, &admin, NOW + 2).await.unwrap();
    assert_eq!(changed_at().await, None);
    // Added again: it carries the deletion's time, so no credential from before the
    // deletion can pass for a new one.
    let mut again = admin_member(&m, &admin);
    again.added_at = NOW + 5;
    store.add_member(&again, &admin, NOW + 5).await.unwrap();
    assert_eq!(changed_at().await, Some(Some(NOW + 2)));
    // Through a ticket too.
    store.delete_member(&m, &admin, NOW + 6).await.unwrap();
    let (_, hash) = code();
    store
        .create_ticket(&new_ticket("t", hash, 1, &admin), NOW)
        .await
        .unwrap();
    let redeemed = store
        .redeem_ticket(&hash, &m, false, NOW + 7)
        .await
        .unwrap();
    assert_eq!(redeemed.before, None);
    assert_eq!(redeemed.changed_at, Some(NOW + 6));
    assert_eq!(changed_at().await, Some(Some(NOW + 6)));
    store.close().await;
}

async fn changes_in_one_second_void_every_credential_issued_after_the_one_before(db: &TestDb) {
    // An update at NOW: credentials issued after it are dated NOW + 1 (changed_at + 1). A
    // deletion in the same second must still void them, so its entry is dated NOW + 1, and
    // a credential after that one is dated later still.
    let store = db.open().await;
    let admin = identifier();
    let m = identifier();
    store
        .add_member(&admin_member(&m, &admin), &admin, NOW)
        .await
        .unwrap();
    store
        .update_member(
            &m,
            &attributes(&[("a", "1")]),
            &BTreeSet::new(),
            &admin,
            NOW,
        )
        .await
        .unwrap();
    store
        .update_member(
            &m,
            &attributes(&[("a", "2")]),
            &BTreeSet::new(),
            &admin,
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(
        store.member(&m).await.unwrap().unwrap().changed_at,
        Some(NOW + 1)
    );
    store.delete_member(&m, &admin, NOW).await.unwrap();
    let times: Vec<u64> = store
        .feed_page(0, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.at)
        .collect();
    assert_eq!(times, [NOW, NOW + 1, NOW + 2]);
    store.close().await;
}

async fn re_enrolling_adds_the_tickets_attributes_and_replace_replaces_them(db: &TestDb) {
    let store = db.open().await;
    let admin = identifier();
    let m = identifier();
    let mut first = admin_member(&m, &admin);
    first.attributes = attributes(&[("component", "web"), ("role", "member")]);
    store.add_member(&first, &admin, NOW).await.unwrap();

    let (_, merge_hash) = code();
    let mut merge = new_ticket("merge", merge_hash, 1, &admin);
    merge.attributes = attributes(&[("role", "enroller"), ("zone", "eu")]);
    store.create_ticket(&merge, NOW).await.unwrap();
    let redeemed = store
        .redeem_ticket(&merge_hash, &m, false, NOW + 1)
        .await
        .unwrap();
    let merged = attributes(&[("component", "web"), ("role", "enroller"), ("zone", "eu")]);
    assert_eq!(redeemed.before, Some(first.attributes.clone()));
    assert_eq!(redeemed.attributes, merged);
    assert!(!redeemed.retried);
    assert_eq!(redeemed.changed_at, Some(NOW + 1));
    assert_eq!(store.member(&m).await.unwrap().unwrap().attributes, merged);

    let (_, replace_hash) = code();
    let mut replace = new_ticket("replace", replace_hash, 1, &admin);
    replace.attributes = attributes(&[("role", "member")]);
    store.create_ticket(&replace, NOW).await.unwrap();
    let redeemed = store
        .redeem_ticket(&replace_hash, &m, true, NOW + 2)
        .await
        .unwrap();
    assert_eq!(redeemed.before, Some(merged.clone()));
    assert_eq!(redeemed.attributes, replace.attributes);
    assert_eq!(
        store.member(&m).await.unwrap().unwrap().attributes,
        replace.attributes
    );

    let feed = store.feed_page(0, 10).await.unwrap();
    let kinds: Vec<_> = feed.iter().map(|e| (e.kind, e.at, e.subject)).collect();
    assert_eq!(
        kinds,
        [
            (FeedKind::Changed, NOW + 1, m),
            (FeedKind::Changed, NOW + 2, m)
        ]
    );
    let audit = store.audit_log(100).await.unwrap();
    let added = audit
        .iter()
        .filter(|e| e.action == AuditEvent::MEMBER_ADDED)
        .nth(1)
        .unwrap();
    assert_eq!(
        added.detail,
        r#"via=ticket:merge attributes={"component":"web","role":"enroller","zone":"eu"} before={"component":"web","role":"member"}"#
    );
    store.close().await;
}

async fn a_retried_redemption_succeeds_after_the_ticket_is_used_up_without_a_use(db: &TestDb) {
    let store = db.open().await;
    let admin = identifier();
    let m = identifier();
    let (_, hash) = code();
    let mut ticket = new_ticket("once", hash, 1, &admin);
    ticket.attributes = attributes(&[("role", "member")]);
    store.create_ticket(&ticket, NOW).await.unwrap();
    let first = store
        .redeem_ticket(&hash, &m, false, NOW + 1)
        .await
        .unwrap();
    assert!(!first.retried);
    assert_eq!(store.list_tickets().await.unwrap()[0].uses_left, 0);

    // The answer was lost; the same identity tries again with the same ticket.
    let again = store
        .redeem_ticket(&hash, &m, false, NOW + 2)
        .await
        .unwrap();
    assert!(again.retried);
    assert_eq!(again.ticket_id, "once");
    assert_eq!(again.attributes, ticket.attributes);
    assert_eq!(again.before, Some(ticket.attributes.clone()));
    assert_eq!(store.list_tickets().await.unwrap()[0].uses_left, 0);
    // Whatever became of the ticket since: revoked, then expired.
    store.revoke_ticket("once", &admin, NOW + 3).await.unwrap();
    let late = NOW + HOUR + 1;
    assert!(
        store
            .redeem_ticket(&hash, &m, false, late)
            .await
            .unwrap()
            .retried
    );
    // Anyone else is refused.
    let other = store
        .redeem_ticket(&hash, &identifier(), false, NOW + 4)
        .await;
    assert!(
        matches!(other, Err(RedeemError::Revoked { .. })),
        "{other:?}"
    );

    let audit = store.audit_log(100).await.unwrap();
    let redeemed = audit
        .iter()
        .filter(|e| e.action == AuditEvent::TICKET_REDEEMED)
        .count();
    assert_eq!(redeemed, 1, "a retry is not another redemption");
    assert_eq!(store.members().await.unwrap().len(), 1);
    store.close().await;
}

async fn a_redemption_after_the_member_was_deleted_spends_a_use(db: &TestDb) {
    let store = db.open().await;
    let admin = identifier();
    let m = identifier();
    let (_, hash) = code();
    store
        .create_ticket(&new_ticket("twice", hash, 2, &admin), NOW)
        .await
        .unwrap();
    store
        .redeem_ticket(&hash, &m, false, NOW + 1)
        .await
        .unwrap();
    store.delete_member(&m, &admin, NOW + 2).await.unwrap();
    let back = store
        .redeem_ticket(&hash, &m, false, NOW + 3)
        .await
        .unwrap();
    assert!(!back.retried);
    assert_eq!(back.before, None);
    assert_eq!(store.list_tickets().await.unwrap()[0].uses_left, 0);
    // A retry of that second redemption is free again.
    assert!(
        store
            .redeem_ticket(&hash, &m, false, NOW + 4)
            .await
            .unwrap()
            .retried
    );
    let other = store
        .redeem_ticket(&hash, &identifier(), false, NOW + 5)
        .await;
    assert!(
        matches!(other, Err(RedeemError::UsedUp { usage_count: 2 })),
        "{other:?}"
    );
    store.close().await;
}

/// 5: the usage count of the ticket in the retry concurrency test.
const RETRY_USES: u32 = 5;

async fn concurrent_redemptions_and_retries_never_take_more_than_the_usage_count(db: &TestDb) {
    // Two pools, as two authority processes sharing the database would have.
    let stores = [db.open().await, db.open().await];
    let admin = identifier();
    let (_, hash) = code();
    stores[0]
        .create_ticket(&new_ticket("busy", hash, RETRY_USES, &admin), NOW)
        .await
        .unwrap();
    // Twice as many identities as uses, each redeeming four times at once.
    let identities: Vec<Identifier> = (0..RETRY_USES * 2).map(|_| identifier()).collect();
    let attempts = identities.len() * 4;
    let start = Arc::new(Barrier::new(attempts));
    let mut redeemers = JoinSet::new();
    for i in 0..attempts {
        let store = stores[i % 2].clone();
        let start = Arc::clone(&start);
        let who = identities[i % identities.len()];
        redeemers.spawn(async move {
            start.wait().await;
            (who, store.redeem_ticket(&hash, &who, false, NOW + 1).await)
        });
    }
    let outcomes = tokio::time::timeout(CONCURRENCY_LIMIT, async {
        let mut outcomes = Vec::new();
        while let Some(joined) = redeemers.join_next().await {
            outcomes.push(joined.unwrap());
        }
        outcomes
    })
    .await
    .expect("the redemptions finish well within the limit");
    let mut first = BTreeSet::new();
    let mut retried = BTreeSet::new();
    for (who, outcome) in outcomes {
        match outcome {
            Ok(r) if r.retried => {
                retried.insert(who);
            }
            Ok(_) => assert!(first.insert(who), "{who} took two uses"),
            Err(RedeemError::UsedUp { .. }) => {}
            Err(other) => panic!("unexpected: {other:?}"),
        }
    }
    assert_eq!(first.len(), RETRY_USES as usize);
    assert!(
        retried.is_subset(&first),
        "only members are told they retried"
    );
    assert_eq!(stores[0].list_tickets().await.unwrap()[0].uses_left, 0);
    let members: BTreeSet<_> = stores[1]
        .members()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.identifier)
        .collect();
    assert_eq!(members, first);
    let audit = stores[0].audit_log(10_000).await.unwrap();
    let redeemed = audit
        .iter()
        .filter(|e| e.action == AuditEvent::TICKET_REDEEMED)
        .count();
    assert_eq!(redeemed, RETRY_USES as usize);
    for store in stores {
        store.close().await;
    }
}

// ---- join requests and auto-approval rules -----------------------------------------------

async fn a_join_request_is_filed_listed_and_audited(db: &TestDb) {
    let store = db.open().await;
    let requester = identifier();
    let mut request = join_request("AAAA-0001", &requester, "192.0.2.1");
    request.attributes = attributes(&[("role", "member")]);
    request.note = "alice's laptop".to_owned();
    let filed = file(&store, &request, LIMITS, NOW).await.unwrap();
    assert!(!filed.refiled);
    let record = filed.record;
    assert_eq!(
        (record.id.as_str(), record.requester, record.source.as_str()),
        ("AAAA-0001", requester, "192.0.2.1")
    );
    assert_eq!(record.attributes, request.attributes);
    assert_eq!(
        (record.lifetime, record.note.as_str()),
        (HOUR, "alice's laptop")
    );
    assert_eq!(record.code, "code-AAAA-0001");
    assert_eq!((record.created_at, record.expires_at), (NOW, NOW + HOUR));
    assert_eq!(record.state, JoinState::Pending);
    assert_eq!(
        (record.decided_at, &record.decided_by, &record.reason),
        (None, &None, &None)
    );
    assert_eq!(
        (&record.granted_attributes, record.granted_lifetime),
        (&None, None)
    );

    assert_eq!(
        store.join_request("AAAA-0001").await.unwrap(),
        Some(record.clone())
    );
    assert_eq!(store.join_request("ZZZZ-9999").await.unwrap(), None);
    assert_eq!(
        store.join_requests(false, NOW + 1).await.unwrap(),
        std::slice::from_ref(&record)
    );
    assert_eq!(store.join_requests(true, NOW + 1).await.unwrap(), [record]);

    let audit = store.audit_log(100).await.unwrap();
    let [filed] = audit.as_slice() else {
        panic!("expected one event: {audit:?}");
    };
    assert_eq!(
        (filed.at, filed.action.as_str(), filed.subject.as_str()),
        (NOW, AuditEvent::REQUEST_FILED, "AAAA-0001")
    );
    assert_eq!(filed.actor, requester.to_string());
    assert_eq!(
        filed.detail,
        r#"source=192.0.2.1 attributes={"role":"member"} lifetime=3600 refiled=false"#
    );
    store.close().await;
}

async fn filing_again_keeps_the_id_and_creation_and_updates_the_code(db: &TestDb) {
    let store = db.open().await;
    let requester = identifier();
    file(
        &store,
        &join_request("AAAA-0001", &requester, "192.0.2.1"),
        LIMITS,
        NOW,
    )
    .await
    .unwrap();

    // Filed again from elsewhere, through another channel: the caller picked a new id and
    // computed a code for it, but the request keeps its first id and gets that id's code.
    let mut again = join_request("BBBB-0002", &requester, "198.51.100.7");
    again.attributes = attributes(&[("role", "enroller")]);
    again.lifetime = 2 * HOUR;
    again.note = "second try".to_owned();
    again.expires_at = NOW + 2 * HOUR;
    let code_for = |id: &str| format!("second-{id}");
    let filed = store
        .file_join_request(&again, &code_for, LIMITS, NOW + 10)
        .await
        .unwrap();
    assert!(filed.refiled);
    let record = filed.record;
    assert_eq!(record.id, "AAAA-0001");
    assert_eq!(record.code, "second-AAAA-0001");
    assert_eq!(record.source, "198.51.100.7");
    assert_eq!(record.attributes, again.attributes);
    assert_eq!(
        (record.lifetime, record.note.as_str()),
        (2 * HOUR, "second try")
    );
    assert_eq!((record.created_at, record.expires_at), (NOW, NOW + HOUR));
    assert_eq!(record.state, JoinState::Pending);
    assert_eq!(store.join_requests(true, NOW + 10).await.unwrap(), [record]);

    let audit = store.audit_log(100).await.unwrap();
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[1].action, AuditEvent::REQUEST_FILED);
    assert_eq!(audit[1].subject, "AAAA-0001");
    assert!(
        audit[1].detail.ends_with("refiled=true"),
        "{}",
        audit[1].detail
    );
    assert!(audit[1].detail.starts_with("source=198.51.100.7 "));

    // Once that request is decided, the requester's next filing is a new request.
    store
        .decide_join_request(
            "AAAA-0001",
            "second-AAAA-0001",
            &Decision::Deny {
                reason: "no".to_owned(),
            },
            &identifier(),
            "admin",
            NOW + 20,
        )
        .await
        .unwrap();
    let filed = file(&store, &again, LIMITS, NOW + 30).await.unwrap();
    assert!(!filed.refiled);
    assert_eq!(filed.record.id, "BBBB-0002");
    assert_eq!(store.join_requests(true, NOW + 30).await.unwrap().len(), 2);
    store.close().await;
}

async fn a_taken_request_id_is_refused(db: &TestDb) {
    let store = db.open().await;
    file(
        &store,
        &join_request("SAME-0001", &identifier(), "192.0.2.1"),
        LIMITS,
        NOW,
    )
    .await
    .unwrap();
    let outcome = file(
        &store,
        &join_request("SAME-0001", &identifier(), "192.0.2.2"),
        LIMITS,
        NOW + 1,
    )
    .await;
    assert!(
        matches!(&outcome, Err(FileError::IdTaken { id }) if id == "SAME-0001"),
        "{outcome:?}"
    );
    assert_eq!(store.join_requests(true, NOW + 1).await.unwrap().len(), 1);
    assert_eq!(store.audit_log(100).await.unwrap().len(), 1);
    store.close().await;
}

async fn the_per_source_cap_admits_five_and_refuses_the_sixth(db: &TestDb) {
    let store = db.open().await;
    let limits = JoinLimits {
        per_source: 5,
        total: 100,
    };
    let mut first_five = Vec::new();
    for i in 0..5 {
        let requester = identifier();
        file(
            &store,
            &join_request(&format!("SRC-{i}"), &requester, "192.0.2.1"),
            limits,
            NOW + i,
        )
        .await
        .unwrap();
        first_five.push(requester);
    }
    let sixth = join_request("SRC-5", &identifier(), "192.0.2.1");
    let outcome = file(&store, &sixth, limits, NOW + 5).await;
    match outcome {
        Err(FileError::PerSource {
            ref source_address,
            pending: 5,
            max: 5,
        }) if source_address == "192.0.2.1" => {}
        other => panic!("expected PerSource, got {other:?}"),
    }
    // Other sources are not affected, and a requester already pending files again.
    file(
        &store,
        &join_request("OTHER-0", &identifier(), "192.0.2.2"),
        limits,
        NOW + 5,
    )
    .await
    .unwrap();
    let again = file(
        &store,
        &join_request("IGNORED", &first_five[0], "192.0.2.1"),
        limits,
        NOW + 5,
    )
    .await
    .unwrap();
    assert!(again.refiled);
    assert_eq!(store.join_requests(false, NOW + 5).await.unwrap().len(), 6);

    // Decided requests no longer count.
    store
        .decide_join_request(
            "SRC-0",
            "code-SRC-0",
            &Decision::Deny {
                reason: "no".to_owned(),
            },
            &identifier(),
            "admin",
            NOW + 6,
        )
        .await
        .unwrap();
    let filed = file(&store, &sixth, limits, NOW + 7).await.unwrap();
    assert!(!filed.refiled);
    store.close().await;
}

async fn the_total_cap_does_not_count_expired_requests(db: &TestDb) {
    let store = db.open().await;
    let limits = JoinLimits {
        per_source: 10,
        total: 3,
    };
    let mut early = join_request("TOT-0", &identifier(), "192.0.2.1");
    early.expires_at = NOW + 100;
    file(&store, &early, limits, NOW).await.unwrap();
    for i in 1..3 {
        let request = join_request(&format!("TOT-{i}"), &identifier(), &format!("192.0.2.{i}"));
        file(&store, &request, limits, NOW).await.unwrap();
    }
    let fourth = join_request("TOT-3", &identifier(), "203.0.113.9");
    let outcome = file(&store, &fourth, limits, NOW + 99).await;
    assert!(
        matches!(outcome, Err(FileError::Total { pending: 3, max: 3 })),
        "{outcome:?}"
    );
    // At the second `early` expires it stops counting; the filing marks it expired.
    let filed = file(&store, &fourth, limits, NOW + 100).await.unwrap();
    assert!(!filed.refiled);
    let early = store.join_request("TOT-0").await.unwrap().unwrap();
    assert_eq!(early.state, JoinState::Expired);
    assert_eq!(early.decided_at, Some(NOW + 100));
    let actions: Vec<_> = store
        .audit_log(100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.subject))
        .collect();
    assert_eq!(
        actions[3..],
        [
            (AuditEvent::REQUEST_EXPIRED.to_owned(), "TOT-0".to_owned()),
            (AuditEvent::REQUEST_FILED.to_owned(), "TOT-3".to_owned()),
        ]
    );
    store.close().await;
}

async fn expired_requests_are_marked_once_and_audited(db: &TestDb) {
    let store = db.open().await;
    let (first, second, third) = (identifier(), identifier(), identifier());
    let mut a = join_request("EXP-A", &first, "192.0.2.1");
    a.expires_at = NOW + 10;
    let mut b = join_request("EXP-B", &second, "192.0.2.2");
    b.expires_at = NOW + 20;
    let c = join_request("EXP-C", &third, "192.0.2.3");
    for request in [&a, &b, &c] {
        file(&store, request, LIMITS, NOW).await.unwrap();
    }
    // Past its expiry but not yet swept, a request is still stored as pending, yet neither
    // listed as pending nor decidable.
    let unswept = store.join_request("EXP-A").await.unwrap().unwrap();
    assert_eq!(unswept.state, JoinState::Pending);
    assert_eq!(unswept.state_at(NOW + 10), JoinState::Expired);
    assert_eq!(unswept.state_at(NOW + 9), JoinState::Pending);
    let pending = store.join_requests(false, NOW + 10).await.unwrap();
    assert_eq!(ids(&pending), ["EXP-B", "EXP-C"]);

    let expired = store.expire_join_requests(NOW + 25).await.unwrap();
    assert_eq!(ids(&expired), ["EXP-A", "EXP-B"]);
    assert!(
        expired
            .iter()
            .all(|r| r.state == JoinState::Expired && r.decided_at == Some(NOW + 25))
    );
    // A second sweep finds nothing more and audits nothing.
    assert!(
        store
            .expire_join_requests(NOW + 26)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(&store.join_requests(false, NOW + 26).await.unwrap()),
        ["EXP-C"]
    );
    assert_eq!(
        ids(&store.join_requests(true, NOW + 26).await.unwrap()),
        ["EXP-A", "EXP-B", "EXP-C"]
    );

    let audit = store.audit_log(100).await.unwrap();
    let expiries: Vec<_> = audit
        .iter()
        .filter(|e| e.action == AuditEvent::REQUEST_EXPIRED)
        .collect();
    assert_eq!(expiries.len(), 2);
    assert_eq!(
        (
            expiries[0].subject.as_str(),
            expiries[0].actor.clone(),
            expiries[0].at
        ),
        ("EXP-A", first.to_string(), NOW + 25)
    );
    assert_eq!(
        expiries[0].detail,
        format!("requester={first} source=192.0.2.1 expires_at={}", NOW + 10)
    );
    assert_eq!(expiries[1].subject, "EXP-B");
    store.close().await;
}

async fn approving_makes_the_requester_a_member_with_the_granted_lifetime(db: &TestDb) {
    let store = db.open().await;
    let admin = identifier();
    let requester = identifier();
    let mut request = join_request("APP-0001", &requester, "192.0.2.1");
    request.attributes = attributes(&[("role", "enroller")]);
    file(&store, &request, LIMITS, NOW).await.unwrap();

    let granted = attributes(&[("role", "member")]);
    let decided = store
        .decide_join_request(
            "APP-0001",
            "code-APP-0001",
            &Decision::Approve {
                attributes: granted.clone(),
                lifetime: 600,
            },
            &admin,
            &admin.to_string(),
            NOW + 5,
        )
        .await
        .unwrap();
    assert_eq!(decided.state, JoinState::Approved);
    assert_eq!(decided.decided_at, Some(NOW + 5));
    assert_eq!(decided.decided_by, Some(admin.to_string()));
    assert_eq!(decided.granted_attributes, Some(granted.clone()));
    assert_eq!(decided.granted_lifetime, Some(600));
    assert_eq!(decided.reason, None);
    // What was asked for stays on record.
    assert_eq!(decided.attributes, request.attributes);
    assert_eq!(store.join_request("APP-0001").await.unwrap(), Some(decided));
    assert!(
        store
            .join_requests(false, NOW + 5)
            .await
            .unwrap()
            .is_empty()
    );

    let member = store
        .member(&requester)
        .await
        .unwrap()
        .expect("a member now");
    assert_eq!(
        member,
        Member {
            identifier: requester,
            attributes: granted,
            added_at: NOW + 5,
            added_by: admin,
            via: "request:APP-0001".to_owned(),
            credential_ttl: Some(600),
            changed_at: None,
        }
    );
    let audit = store.audit_log(100).await.unwrap();
    let [_, approved, added] = audit.as_slice() else {
        panic!("expected filed, approved, added: {audit:?}");
    };
    assert_eq!(
        (
            approved.action.as_str(),
            approved.subject.as_str(),
            approved.at
        ),
        (AuditEvent::REQUEST_APPROVED, "APP-0001", NOW + 5)
    );
    assert_eq!(approved.actor, admin.to_string());
    assert_eq!(
        approved.detail,
        format!(
            r#"requester={requester} attributes={{"role":"member"}} lifetime=600 decided_by="{admin}""#
        )
    );
    assert_eq!(
        (
            added.action.as_str(),
            added.subject.clone(),
            added.actor.clone()
        ),
        (
            AuditEvent::MEMBER_ADDED,
            requester.to_string(),
            admin.to_string()
        )
    );
    assert_eq!(
        added.detail,
        r#"via=request:APP-0001 attributes={"role":"member"} credential_ttl=600"#
    );

    // The limit survives a reopen, and redeeming a ticket later lifts it.
    store.close().await;
    let store = db.open().await;
    assert_eq!(
        store
            .member(&requester)
            .await
            .unwrap()
            .unwrap()
            .credential_ttl,
        Some(600)
    );
    let (_, hash) = code();
    store
        .create_ticket(&new_ticket("lift", hash, 1, &admin), NOW + 6)
        .await
        .unwrap();
    store
        .redeem_ticket(&hash, &requester, false, NOW + 7)
        .await
        .unwrap();
    let member = store.member(&requester).await.unwrap().unwrap();
    assert_eq!(
        (member.via.as_str(), member.credential_ttl),
        ("ticket:lift", None)
    );
    store.close().await;
}

async fn a_decision_with_a_stale_code_is_refused_and_the_request_stays_pending(db: &TestDb) {
    let store = db.open().await;
    let requester = identifier();
    let request = join_request("STALE-01", &requester, "192.0.2.1");
    file(&store, &request, LIMITS, NOW).await.unwrap();
    // Filed again through another channel: the code the admin saw is no longer current.
    let code_for = |id: &str| format!("new-{id}");
    store
        .file_join_request(&request, &code_for, LIMITS, NOW + 1)
        .await
        .unwrap();
    let audit_before = store.audit_log(100).await.unwrap();
    for decision in [
        Decision::Approve {
            attributes: BTreeMap::new(),
            lifetime: 600,
        },
        Decision::Deny {
            reason: "no".to_owned(),
        },
    ] {
        let outcome = store
            .decide_join_request(
                "STALE-01",
                "code-STALE-01",
                &decision,
                &identifier(),
                "admin",
                NOW + 2,
            )
            .await;
        assert!(
            matches!(outcome, Err(DecideError::CodeChanged)),
            "{outcome:?}"
        );
    }
    let record = store.join_request("STALE-01").await.unwrap().unwrap();
    assert_eq!(record.state, JoinState::Pending);
    assert_eq!(record.code, "new-STALE-01");
    assert!(store.member(&requester).await.unwrap().is_none());
    assert_eq!(store.audit_log(100).await.unwrap(), audit_before);
    // With the current code it is decided.
    store
        .decide_join_request(
            "STALE-01",
            "new-STALE-01",
            &Decision::Approve {
                attributes: BTreeMap::new(),
                lifetime: 600,
            },
            &identifier(),
            "admin",
            NOW + 3,
        )
        .await
        .unwrap();
    store.close().await;
}

async fn denying_records_the_reason_and_adds_no_member(db: &TestDb) {
    let store = db.open().await;
    let admin = identifier();
    let requester = identifier();
    file(
        &store,
        &join_request("DENY-001", &requester, "192.0.2.1"),
        LIMITS,
        NOW,
    )
    .await
    .unwrap();
    let decided = store
        .decide_join_request(
            "DENY-001",
            "code-DENY-001",
            &Decision::Deny {
                reason: "who are you?".to_owned(),
            },
            &admin,
            &admin.to_string(),
            NOW + 5,
        )
        .await
        .unwrap();
    assert_eq!(decided.state, JoinState::Denied);
    assert_eq!(decided.decided_at, Some(NOW + 5));
    assert_eq!(decided.decided_by, Some(admin.to_string()));
    assert_eq!(decided.reason.as_deref(), Some("who are you?"));
    assert_eq!(
        (decided.granted_attributes, decided.granted_lifetime),
        (None, None)
    );
    assert!(store.member(&requester).await.unwrap().is_none());
    let audit = store.audit_log(100).await.unwrap();
    let [_, denied] = audit.as_slice() else {
        panic!("expected filed, denied: {audit:?}");
    };
    assert_eq!(
        (
            denied.action.as_str(),
            denied.subject.as_str(),
            denied.actor.clone()
        ),
        (AuditEvent::REQUEST_DENIED, "DENY-001", admin.to_string())
    );
    assert_eq!(
        denied.detail,
        format!(r#"requester={requester} decided_by="{admin}" reason="who are you?""#)
    );
    store.close().await;
}

async fn a_decided_or_expired_request_cannot_be_decided(db: &TestDb) {
    let store = db.open().await;
    let admin = identifier();
    let approve = Decision::Approve {
        attributes: BTreeMap::new(),
        lifetime: 600,
    };
    let deny = Decision::Deny {
        reason: "no".to_owned(),
    };
    let decide = |id: &'static str, decision: &Decision, now: u64| {
        let (store, decision) = (store.clone(), decision.clone());
        async move {
            store
                .decide_join_request(id, &format!("code-{id}"), &decision, &admin, "admin", now)
                .await
        }
    };
    for (id, expires_at) in [
        ("TWICE", NOW + HOUR),
        ("LATE", NOW + 10),
        ("SWEPT", NOW + 10),
    ] {
        let mut request = join_request(id, &identifier(), "192.0.2.1");
        request.expires_at = expires_at;
        file(&store, &request, LIMITS, NOW).await.unwrap();
    }

    decide("TWICE", &approve, NOW + 1).await.unwrap();
    for decision in [&approve, &deny] {
        let outcome = decide("TWICE", decision, NOW + 2).await;
        assert!(
            matches!(
                outcome,
                Err(DecideError::Closed {
                    state: JoinState::Approved
                })
            ),
            "{outcome:?}"
        );
    }
    // At the second it expires, a request can no longer be decided.
    let outcome = decide("LATE", &approve, NOW + 10).await;
    assert!(
        matches!(outcome, Err(DecideError::Expired { expires_at }) if expires_at == NOW + 10),
        "{outcome:?}"
    );
    assert_eq!(
        store.join_request("LATE").await.unwrap().unwrap().state,
        JoinState::Pending
    );
    store.expire_join_requests(NOW + 11).await.unwrap();
    let outcome = decide("SWEPT", &deny, NOW + 11).await;
    assert!(
        matches!(
            outcome,
            Err(DecideError::Closed {
                state: JoinState::Expired
            })
        ),
        "{outcome:?}"
    );
    let outcome = decide("NOPE", &approve, NOW + 11).await;
    assert!(matches!(outcome, Err(DecideError::NotFound)), "{outcome:?}");
    // One member, from the one approval.
    assert_eq!(store.members().await.unwrap().len(), 1);
    store.close().await;
}

async fn corrupt_join_requests_are_errors_not_panics(db: &TestDb) {
    let store = db.open().await;
    file(
        &store,
        &join_request("BAD-0001", &identifier(), "192.0.2.1"),
        LIMITS,
        NOW,
    )
    .await
    .unwrap();
    db.execute("UPDATE join_requests SET attributes = '[1]'")
        .await;
    match store.join_requests(true, NOW).await {
        Err(e @ StoreError::Corrupt { .. }) => {
            assert!(
                e.to_string()
                    .contains("attributes of join request \"BAD-0001\""),
                "{e}"
            )
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    db.execute("UPDATE join_requests SET attributes = '{}', requester = 'nobody'")
        .await;
    assert!(matches!(
        store.join_request("BAD-0001").await,
        Err(StoreError::Corrupt { .. })
    ));
    db.execute(&format!(
        "UPDATE join_requests SET requester = '{}', created_at = -1",
        identifier()
    ))
    .await;
    assert!(matches!(
        store.join_request("BAD-0001").await,
        Err(StoreError::Corrupt { .. })
    ));
    store.close().await;
}

async fn rules_are_added_listed_until_they_expire_and_deleted(db: &TestDb) {
    let store = db.open().await;
    let admin = identifier();
    let office = RuleRecord {
        id: "office".to_owned(),
        netblock: "192.0.2.0/24".to_owned(),
        attributes: attributes(&[("role", "member")]),
        max_credential_lifetime: 600,
        created_at: NOW,
        created_by: admin,
        expires_at: NOW + HOUR,
    };
    let event = RuleRecord {
        id: "event".to_owned(),
        netblock: "2001:db8::/32".to_owned(),
        attributes: BTreeMap::new(),
        max_credential_lifetime: 60,
        created_at: NOW + 1,
        created_by: admin,
        expires_at: NOW + 100,
    };
    store.add_rule(&office, NOW).await.unwrap();
    store.add_rule(&event, NOW + 1).await.unwrap();
    assert!(
        store.add_rule(&office, NOW + 2).await.is_err(),
        "a rule id is added once"
    );
    assert_eq!(
        store.rules(NOW + 2).await.unwrap(),
        [office.clone(), event.clone()]
    );
    // At the second a rule expires it stops being listed.
    assert_eq!(
        store.rules(NOW + 100).await.unwrap(),
        std::slice::from_ref(&office)
    );

    let deleter = identifier();
    assert_eq!(
        store
            .delete_rule("office", &deleter, NOW + 3)
            .await
            .unwrap(),
        Some(office)
    );
    assert_eq!(
        store
            .delete_rule("office", &deleter, NOW + 4)
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.rules(NOW + 5).await.unwrap(), [event]);

    let audit = store.audit_log(100).await.unwrap();
    let actions: Vec<_> = audit
        .iter()
        .map(|e| (e.action.as_str(), e.subject.as_str(), e.at))
        .collect();
    assert_eq!(
        actions,
        [
            (AuditEvent::RULE_ADDED, "office", NOW),
            (AuditEvent::RULE_ADDED, "event", NOW + 1),
            (AuditEvent::RULE_DELETED, "office", NOW + 3),
        ]
    );
    assert_eq!(audit[0].actor, admin.to_string());
    assert_eq!(
        audit[0].detail,
        format!(
            r#"netblock=192.0.2.0/24 attributes={{"role":"member"}} max_credential_lifetime=600 expires_at={}"#,
            NOW + HOUR
        )
    );
    assert_eq!(audit[2].actor, deleter.to_string());
    store.close().await;
}

async fn twenty_filings_at_once_from_one_source_file_exactly_five(db: &TestDb) {
    // Two pools: two authority processes sharing the database.
    let stores = [db.open().await, db.open().await];
    let limits = JoinLimits {
        per_source: 5,
        total: 1000,
    };
    let start = Arc::new(Barrier::new(FILERS));
    let mut filers = JoinSet::new();
    for i in 0..FILERS {
        let store = stores[i % stores.len()].clone();
        let start = Arc::clone(&start);
        filers.spawn(async move {
            let request = join_request(&format!("RACE-{i:02}"), &identifier(), "192.0.2.1");
            start.wait().await;
            file(&store, &request, limits, NOW).await
        });
    }
    let outcomes = tokio::time::timeout(CONCURRENCY_LIMIT, async {
        let mut outcomes = Vec::new();
        while let Some(joined) = filers.join_next().await {
            outcomes.push(joined.unwrap());
        }
        outcomes
    })
    .await
    .expect("the filings finish well within the limit");
    let mut filed = 0;
    for outcome in outcomes {
        match outcome {
            Ok(Filed { refiled: false, .. }) => filed += 1,
            Err(FileError::PerSource {
                pending: 5, max: 5, ..
            }) => {}
            other => panic!("a filing ended otherwise: {other:?}"),
        }
    }
    assert_eq!(filed, 5);
    assert_eq!(stores[1].join_requests(false, NOW).await.unwrap().len(), 5);
    let audit = stores[0].audit_log(1000).await.unwrap();
    assert_eq!(audit.len(), 5);
    assert!(audit.iter().all(|e| e.action == AuditEvent::REQUEST_FILED));
    for store in stores {
        store.close().await;
    }
}

async fn one_requester_filing_ten_times_at_once_has_one_request(db: &TestDb) {
    let stores = [db.open().await, db.open().await];
    let requester = identifier();
    let start = Arc::new(Barrier::new(10));
    let mut filers = JoinSet::new();
    for i in 0..10 {
        let store = stores[i % stores.len()].clone();
        let start = Arc::clone(&start);
        filers.spawn(async move {
            let request = join_request(&format!("ONE-{i}"), &requester, "192.0.2.1");
            start.wait().await;
            file(&store, &request, LIMITS, NOW).await
        });
    }
    let outcomes = tokio::time::timeout(CONCURRENCY_LIMIT, async {
        let mut outcomes = Vec::new();
        while let Some(joined) = filers.join_next().await {
            outcomes.push(joined.unwrap().expect("every filing succeeds"));
        }
        outcomes
    })
    .await
    .expect("the filings finish well within the limit");
    assert_eq!(outcomes.iter().filter(|f| !f.refiled).count(), 1);
    let stored = stores[0].join_requests(true, NOW).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert!(outcomes.iter().all(|f| f.record.id == stored[0].id));
    for store in stores {
        store.close().await;
    }
}

// ---- clearing a flood of join requests, and audit rows of their own ----------------------

async fn a_bulk_denial_denies_what_it_picks_oldest_first_audited_once(db: &TestDb) {
    let store = db.open().await;
    let admin = identifier();
    let sources = [
        "198.51.100.7",
        "192.0.2.1",
        "198.51.100.9",
        "unknown",
        "198.51.100.1",
    ];
    for (n, source) in sources.iter().enumerate() {
        let request = join_request(&format!("BULK-{n}"), &identifier(), source);
        file(&store, &request, LIMITS, NOW + u64::try_from(n).unwrap())
            .await
            .unwrap();
    }
    // One of them is decided already, one expires undecided: neither is denied in bulk.
    store
        .decide_join_request(
            "BULK-4",
            "code-BULK-4",
            &Decision::Deny {
                reason: "one by one".to_owned(),
            },
            &admin,
            &admin.to_string(),
            NOW + 10,
        )
        .await
        .unwrap();
    let mut short = join_request("BULK-X", &identifier(), "198.51.100.8");
    short.expires_at = NOW + 20;
    file(&store, &short, LIMITS, NOW + 10).await.unwrap();

    let from_198 = |r: &JoinRecord| r.source.starts_with("198.51.100.");
    let done = store
        .deny_join_requests(&from_198, "198.51.100.0/24", "flood", 1, &admin, NOW + 30)
        .await
        .unwrap();
    assert_eq!(ids(&done.denied), ["BULK-0"]);
    assert!(done.more, "BULK-2 matches too");
    let done = store
        .deny_join_requests(&from_198, "198.51.100.0/24", "flood", 100, &admin, NOW + 31)
        .await
        .unwrap();
    assert_eq!(ids(&done.denied), ["BULK-2"]);
    assert!(!done.more);
    let denied = &done.denied[0];
    assert_eq!(denied.state, JoinState::Denied);
    assert_eq!(denied.decided_at, Some(NOW + 31));
    assert_eq!(denied.decided_by, Some(admin.to_string()));
    assert_eq!(denied.reason.as_deref(), Some("flood"));

    // Nothing picked: nothing written.
    let before = store.audit_log(1000).await.unwrap().len();
    let none = store
        .deny_join_requests(&from_198, "198.51.100.0/24", "flood", 100, &admin, NOW + 32)
        .await
        .unwrap();
    assert!(none.denied.is_empty() && !none.more);
    assert_eq!(store.audit_log(1000).await.unwrap().len(), before);

    let all = store
        .deny_join_requests(&|_| true, "all", "clearing", 100, &admin, NOW + 33)
        .await
        .unwrap();
    assert_eq!(ids(&all.denied), ["BULK-1", "BULK-3"]);
    assert!(
        store
            .join_requests(false, NOW + 33)
            .await
            .unwrap()
            .is_empty()
    );
    let states: Vec<(String, JoinState)> = store
        .join_requests(true, NOW + 33)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.state))
        .collect();
    assert!(
        states.contains(&("BULK-X".to_owned(), JoinState::Expired)),
        "{states:?}"
    );

    let audit = store.audit_log(1000).await.unwrap();
    let bulk: Vec<&AuditEvent> = audit
        .iter()
        .filter(|e| e.action == AuditEvent::REQUESTS_BULK_DENIED)
        .collect();
    let rows: Vec<(&str, &str, &str)> = bulk
        .iter()
        .map(|e| (e.actor.as_str(), e.subject.as_str(), e.detail.as_str()))
        .collect();
    let admin = admin.to_string();
    assert_eq!(
        rows,
        [
            (
                admin.as_str(),
                "198.51.100.0/24",
                r#"count=1 reason="flood" ids=BULK-0"#
            ),
            (
                admin.as_str(),
                "198.51.100.0/24",
                r#"count=1 reason="flood" ids=BULK-2"#
            ),
            (
                admin.as_str(),
                "all",
                r#"count=2 reason="clearing" ids=BULK-1,BULK-3"#
            ),
        ]
    );
    // Only the single denial is audited as one.
    let single: Vec<&str> = audit
        .iter()
        .filter(|e| e.action == AuditEvent::REQUEST_DENIED)
        .map(|e| e.subject.as_str())
        .collect();
    assert_eq!(single, ["BULK-4"]);
    store.close().await;
}

async fn a_bulk_denial_racing_approvals_decides_each_request_once(db: &TestDb) {
    // Two pools: two authority processes sharing the database.
    let stores = [db.open().await, db.open().await];
    let admin = identifier();
    let mut requesters = Vec::new();
    for i in 0..FILERS {
        let requester = identifier();
        let request = join_request(&format!("RACE-{i:02}"), &requester, "192.0.2.1");
        file(&stores[0], &request, LIMITS, NOW).await.unwrap();
        requesters.push(requester);
    }
    let start = Arc::new(Barrier::new(2));
    let approver = {
        let (store, start) = (stores[0].clone(), Arc::clone(&start));
        tokio::spawn(async move {
            start.wait().await;
            let mut approved = BTreeSet::new();
            for i in (0..FILERS).rev() {
                let id = format!("RACE-{i:02}");
                let decision = Decision::Approve {
                    attributes: BTreeMap::new(),
                    lifetime: HOUR,
                };
                match store
                    .decide_join_request(
                        &id,
                        &format!("code-{id}"),
                        &decision,
                        &admin,
                        "admin",
                        NOW,
                    )
                    .await
                {
                    Ok(_) => {
                        approved.insert(id);
                    }
                    Err(DecideError::Closed {
                        state: JoinState::Denied,
                    }) => {}
                    Err(other) => panic!("{id}: {other:?}"),
                }
            }
            approved
        })
    };
    let denier = {
        let (store, start) = (stores[1].clone(), Arc::clone(&start));
        tokio::spawn(async move {
            start.wait().await;
            store
                .deny_join_requests(&|_| true, "all", "flood", 1000, &admin, NOW)
                .await
                .unwrap()
        })
    };
    let (approved, denied) = tokio::time::timeout(CONCURRENCY_LIMIT, async {
        (approver.await.unwrap(), denier.await.unwrap())
    })
    .await
    .expect("the race finishes well within the limit");
    let denied: BTreeSet<String> = denied.denied.into_iter().map(|r| r.id).collect();
    assert!(approved.is_disjoint(&denied), "{approved:?} {denied:?}");
    assert_eq!(approved.len() + denied.len(), FILERS);
    for (i, requester) in requesters.iter().enumerate() {
        let id = format!("RACE-{i:02}");
        let stored = stores[0].join_request(&id).await.unwrap().unwrap();
        let member = stores[0].member(requester).await.unwrap();
        if denied.contains(&id) {
            assert_eq!(stored.state, JoinState::Denied);
            assert!(
                member.is_none(),
                "{id} was denied but its requester is a member"
            );
        } else {
            assert_eq!(stored.state, JoinState::Approved);
            assert!(member.is_some());
        }
    }
    let audit = stores[1].audit_log(1000).await.unwrap();
    let bulk: Vec<&AuditEvent> = audit
        .iter()
        .filter(|e| e.action == AuditEvent::REQUESTS_BULK_DENIED)
        .collect();
    if denied.is_empty() {
        assert!(bulk.is_empty());
    } else {
        assert_eq!(bulk.len(), 1);
        assert!(
            bulk[0]
                .detail
                .starts_with(&format!("count={} ", denied.len()))
        );
    }
    for store in stores {
        store.close().await;
    }
}

async fn an_appended_audit_event_reads_back_as_written(db: &TestDb) {
    let store = db.open().await;
    let guesser = identifier().to_string();
    let event = AuditEvent {
        at: NOW + 7,
        actor: guesser.clone(),
        action: AuditEvent::GUESS_THROTTLED.to_owned(),
        subject: "2001:db8:1:2::/64".to_owned(),
        detail: "kind=redeem counted_by=source failures=6 refused=0".to_owned(),
    };
    store.append_audit(&event).await.unwrap();
    assert_eq!(store.audit_log(10).await.unwrap(), [event]);
    store.close().await;
}

// ---- backend-specific ---------------------------------------------------------------------

#[tokio::test]
async fn sqlite_file_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("authority.sqlite");
    let store = MembershipStore::create_sqlite(&path, &owner(), NOW)
        .await
        .unwrap();
    assert_eq!(mode(&path), 0o600);
    assert!(store.location().contains("authority.sqlite"));
    store.close().await;
    // A file someone made readable by others is tightened when opened.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = MembershipStore::open_sqlite(&path, &owner(), NOW)
        .await
        .unwrap();
    assert_eq!(mode(&path), 0o600);
    store.close().await;
}

#[tokio::test]
async fn postgres_errors_and_names_never_show_the_password() {
    let database = TempDatabase::for_test("the membership store tests", "kith_test");
    let store = MembershipStore::create(&database.url, &owner(), NOW)
        .await
        .unwrap();
    let password = password_of(&database.url);
    assert!(store.location().starts_with("PostgreSQL database "));
    assert!(!store.location().contains(&format!(":{password}@")));
    assert!(!format!("{store:?}").contains(&format!(":{password}@")));
    store.close().await;

    let wrong = "not-the-kith-password-7f3a";
    let url = database
        .url
        .replacen(&format!(":{password}@"), &format!(":{wrong}@"), 1);
    let error = MembershipStore::open(&url, &owner(), NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::LoginRefused { .. }),
        "{error:?}"
    );
    let shown = format!("{error:?} {}", error_chain(&error));
    assert!(!shown.contains(wrong), "{shown}");
}

#[tokio::test]
async fn postgres_a_server_that_is_not_there_is_reported_at_once_not_after_the_pool_timeout() {
    // A port nothing listens on: bound, read back, released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://kith:kith@127.0.0.1:{port}/kith");
    let started = std::time::Instant::now();
    let error = MembershipStore::create(&url, &owner(), NOW)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Connect { .. }), "{error:?}");
    assert!(
        error_chain(&error).contains("refused"),
        "{}",
        error_chain(&error)
    );
    // The pool alone would retry for its 30 s acquire timeout.
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test]
async fn postgres_a_missing_database_is_named_once_with_how_to_create_it() {
    let database = TempDatabase::for_test("the membership store tests", "kith_test");
    let (base, _) = database.url.rsplit_once('/').unwrap();
    let url = format!("{base}/kith_no_such_database_4b1e");
    let error = MembershipStore::create(&url, &owner(), NOW)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NoDatabase { .. }), "{error:?}");
    let shown = error_chain(&error);
    assert!(shown.contains("createdb -h "), "{shown}");
    assert!(shown.contains(" kith_no_such_database_4b1e`"), "{shown}");
    assert_eq!(
        shown.matches("does not exist").count(),
        1,
        "the reason is given once: {shown}"
    );
    assert!(!shown.contains("newer kith"), "{shown}");
}

// ---- helpers ------------------------------------------------------------------------------

/// Redeem one ticket of usage count `n` with [`REDEEMERS`] distinct identities at once,
/// spread over `stores` (separate pools: separate authority processes), and check that
/// exactly `n` became members and every other one was told the ticket is used up.
async fn enrolls_exactly(stores: &[MembershipStore], n: u32) {
    let admin = identifier();
    let (_, hash) = code();
    let mut ticket = new_ticket("popular", hash, n, &admin);
    ticket.attributes = attributes(&[("role", "member")]);
    stores[0].create_ticket(&ticket, NOW).await.unwrap();

    let start = Arc::new(Barrier::new(REDEEMERS));
    let mut redeemers = JoinSet::new();
    for i in 0..REDEEMERS {
        let store = stores[i % stores.len()].clone();
        let start = Arc::clone(&start);
        let redeemer = identifier();
        redeemers.spawn(async move {
            start.wait().await;
            (
                redeemer,
                store.redeem_ticket(&hash, &redeemer, false, NOW + 1).await,
            )
        });
    }
    let mut enrolled = BTreeSet::new();
    let outcomes = tokio::time::timeout(CONCURRENCY_LIMIT, async {
        let mut outcomes = Vec::new();
        while let Some(joined) = redeemers.join_next().await {
            outcomes.push(joined.unwrap());
        }
        outcomes
    })
    .await
    .expect("200 redemptions finish well within the limit");
    for (redeemer, outcome) in outcomes {
        match outcome {
            Ok(redeemed) => {
                assert_eq!(redeemed.ticket_id, "popular");
                assert_eq!(redeemed.attributes, ticket.attributes);
                enrolled.insert(redeemer);
            }
            Err(RedeemError::UsedUp { usage_count }) => assert_eq!(usage_count, n),
            Err(other) => panic!("a redeemer failed otherwise: {other:?}"),
        }
    }
    assert_eq!(enrolled.len(), n as usize, "exactly {n} enrolled");

    for store in stores {
        let members: BTreeSet<_> = store
            .members()
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.identifier)
            .collect();
        assert_eq!(members, enrolled);
        assert_eq!(store.list_tickets().await.unwrap()[0].uses_left, 0);
    }
    let audit = stores[0].audit_log(10_000).await.unwrap();
    let count = |action: &str| audit.iter().filter(|e| e.action == action).count();
    assert_eq!(count(AuditEvent::TICKET_REDEEMED), n as usize);
    assert_eq!(count(AuditEvent::MEMBER_ADDED), n as usize);
}

/// Caps loose enough not to matter, for tests that are not about them.
const LIMITS: JoinLimits = JoinLimits {
    per_source: 100,
    total: 1000,
};

/// 20: how many distinct requesters file at once from one source in the concurrency test.
const FILERS: usize = 20;

/// A request from `requester` at `source`, asking for nothing for an hour, expiring in an
/// hour.
fn join_request(id: &str, requester: &Identifier, source: &str) -> NewJoinRequest {
    NewJoinRequest {
        id: id.to_owned(),
        requester: *requester,
        source: source.to_owned(),
        attributes: BTreeMap::new(),
        lifetime: HOUR,
        note: String::new(),
        expires_at: NOW + HOUR,
    }
}

/// File `request` with codes `code-<id>`.
async fn file(
    store: &MembershipStore,
    request: &NewJoinRequest,
    limits: JoinLimits,
    now: u64,
) -> Result<Filed, FileError> {
    let code_for = |id: &str| format!("code-{id}");
    store
        .file_join_request(request, &code_for, limits, now)
        .await
}

fn ids(records: &[JoinRecord]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

fn identifier() -> Identifier {
    Identifier::from_bytes(rand::random())
}

/// A fresh one-time code and its SHA-256.
fn code() -> ([u8; 32], [u8; 32]) {
    let code: [u8; 32] = rand::random();
    (code, Sha256::digest(code).into())
}

fn new_ticket(id: &str, code_hash: [u8; 32], usage_count: u32, admin: &Identifier) -> NewTicket {
    NewTicket {
        id: id.to_owned(),
        code_hash,
        attributes: BTreeMap::new(),
        usage_count,
        expires_at: NOW + HOUR,
        created_by: *admin,
    }
}

fn admin_member(identifier: &Identifier, admin: &Identifier) -> Member {
    Member {
        identifier: *identifier,
        attributes: attributes(&[("role", "member")]),
        added_at: NOW,
        added_by: *admin,
        via: Member::VIA_ADMIN.to_owned(),
        credential_ttl: None,
        changed_at: None,
    }
}

fn attributes(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut shown = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        shown.push_str(": ");
        shown.push_str(&cause.to_string());
        source = cause.source();
    }
    shown
}

/// The password in `postgres://user:password@…`.
fn password_of(url: &str) -> &str {
    let credentials = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(credentials, _)| credentials)
        .expect("the test URL has user and password");
    credentials
        .split_once(':')
        .map(|(_, password)| password)
        .expect("the test URL has a password")
}

/// The project of every store the scenarios open.
fn owner() -> StoreOwner {
    StoreOwner {
        project_id: "0123456789abcdef0123456789abcdef".to_owned(),
        authority: None,
    }
}

/// A fresh, empty database for one test, on either backend.
enum TestDb {
    Sqlite { _dir: TempDir, path: PathBuf },
    Postgres(TempDatabase),
}

impl TestDb {
    async fn run_on_sqlite(scenario: impl AsyncFnOnce(&TestDb)) {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("authority.sqlite");
        scenario(&TestDb::Sqlite { _dir: dir, path }).await;
    }

    async fn run_on_postgres(scenario: impl AsyncFnOnce(&TestDb)) {
        scenario(&TestDb::Postgres(TempDatabase::for_test(
            "the membership store tests",
            "kith_test",
        )))
        .await;
    }

    /// What [`MembershipStore::open`] and [`MembershipStore::create`] take: a file path or
    /// a URL.
    fn location(&self) -> String {
        match self {
            TestDb::Sqlite { path, .. } => path.to_str().unwrap().to_owned(),
            TestDb::Postgres(database) => database.url.clone(),
        }
    }

    /// A new store on this database: a new pool, as another authority process would have.
    /// The first creates the test project's store; the others open it.
    async fn open(&self) -> MembershipStore {
        match MembershipStore::open(&self.location(), &owner(), NOW).await {
            Ok(store) => store,
            Err(StoreError::NoProject { .. }) => {
                MembershipStore::create(&self.location(), &owner(), NOW)
                    .await
                    .unwrap()
            }
            Err(other) => panic!("cannot open the test's store: {other:?}"),
        }
    }

    /// Run `sql` behind the store's back, on a connection of its own.
    async fn execute(&self, sql: &str) {
        match self {
            TestDb::Sqlite { path, .. } => {
                let mut conn = sqlite_connection(path).await;
                conn.execute(sql).await.unwrap();
                conn.close().await.unwrap();
            }
            TestDb::Postgres(database) => {
                let mut conn = PgConnection::connect(&database.url).await.unwrap();
                conn.execute(sql).await.unwrap();
                conn.close().await.unwrap();
            }
        }
    }

    /// Make every audit insert of `action` fail, so that a transaction writing one rolls
    /// back after its earlier statements ran.
    async fn fail_audit_action(&self, action: &str) {
        let sql = match self {
            TestDb::Sqlite { .. } => format!(
                "CREATE TRIGGER fail_audit BEFORE INSERT ON audit \
                 WHEN NEW.action = '{action}' BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
            ),
            TestDb::Postgres(_) => format!(
                "CREATE FUNCTION fail_audit() RETURNS trigger AS $$ BEGIN \
                 IF NEW.action = '{action}' THEN RAISE EXCEPTION 'refused by test'; END IF; \
                 RETURN NEW; END $$ LANGUAGE plpgsql; \
                 CREATE TRIGGER fail_audit BEFORE INSERT ON audit \
                 FOR EACH ROW EXECUTE FUNCTION fail_audit();"
            ),
        };
        self.execute(&sql).await;
    }

    /// The one integer that `sql` selects.
    async fn scalar(&self, sql: &str) -> i64 {
        match self {
            TestDb::Sqlite { path, .. } => {
                let mut conn = sqlite_connection(path).await;
                sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
            }
            TestDb::Postgres(database) => {
                let mut conn = PgConnection::connect(&database.url).await.unwrap();
                sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
            }
        }
    }

    /// Everything the database holds: the SQLite file's bytes (and its write-ahead log, if
    /// one is left), or the text of every row of every PostgreSQL table.
    async fn contents(&self) -> Vec<u8> {
        match self {
            TestDb::Sqlite { path, .. } => {
                let mut bytes = std::fs::read(path).unwrap();
                let mut wal = path.as_os_str().to_owned();
                wal.push("-wal");
                bytes.extend(std::fs::read(&wal).unwrap_or_default());
                bytes
            }
            TestDb::Postgres(database) => {
                let mut conn = PgConnection::connect(&database.url).await.unwrap();
                let mut text = String::new();
                for table in ["tickets", "members", "audit", "_sqlx_migrations"] {
                    let rows: Vec<String> =
                        sqlx::query_scalar(&format!("SELECT t::text FROM {table} AS t"))
                            .fetch_all(&mut conn)
                            .await
                            .unwrap();
                    text.extend(rows);
                }
                text.into_bytes()
            }
        }
    }

    /// The columns of `table`, in order, with whether each is NOT NULL.
    async fn columns(&self, table: &str) -> Vec<(String, bool)> {
        match self {
            TestDb::Sqlite { path, .. } => {
                let mut conn = sqlite_connection(path).await;
                sqlx::query("SELECT name, \"notnull\" FROM pragma_table_info($1) ORDER BY cid")
                    .bind(table)
                    .fetch_all(&mut conn)
                    .await
                    .unwrap()
                    .iter()
                    .map(|row| (row.get::<String, _>(0), row.get::<i64, _>(1) != 0))
                    .collect()
            }
            TestDb::Postgres(database) => {
                let mut conn = PgConnection::connect(&database.url).await.unwrap();
                sqlx::query(
                    "SELECT column_name::text, is_nullable::text FROM information_schema.columns \
                     WHERE table_schema = current_schema() AND table_name = $1 \
                     ORDER BY ordinal_position",
                )
                .bind(table)
                .fetch_all(&mut conn)
                .await
                .unwrap()
                .iter()
                .map(|row| (row.get::<String, _>(0), row.get::<String, _>(1) == "NO"))
                .collect()
            }
        }
    }
}

async fn sqlite_connection(path: &std::path::Path) -> SqliteConnection {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(Duration::from_secs(5));
    SqliteConnection::connect_with(&options).await.unwrap()
}
