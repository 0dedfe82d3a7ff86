//! Answers of any size (DESIGN §5): lists larger than one secure-channel message are paged
//! by the authority and followed by the CLI, which prints them whole and in order.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use common::Kith;
use kith_authority::store::{JoinLimits, Member, MembershipStore, NewJoinRequest, StoreOwner};
use kith_identity::{Identifier, unix_now};

/// The authority node's store of project `project_id`, opened beside the running authority
/// (SQLite in WAL mode takes a second connection), to add rows faster than one command each.
async fn store(k: &Kith, project_id: &str) -> MembershipStore {
    let path = k.home().join("nodes/authority/authority.sqlite");
    let owner = StoreOwner {
        project_id: project_id.to_owned(),
        authority: None,
    };
    MembershipStore::open_sqlite(&path, &owner, unix_now())
        .await
        .unwrap()
}

/// The `n`th identifier of the test: distinct, and scattered over the identifier order.
fn identifier(n: u64) -> Identifier {
    let mut bytes = [0u8; 20];
    bytes[..8].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
    bytes[8..16].copy_from_slice(&n.to_be_bytes());
    Identifier::from_bytes(bytes)
}

#[test]
fn ten_thousand_members_and_a_thousand_pending_requests_list_whole_and_in_order() {
    let k = Kith::new();
    let created = k.json(&["authority", "create", "--project", "acme"]);
    let project_id = created["project_id"].as_str().unwrap();
    let admin = k.json(&["identity", "show"])["identifier"].clone();
    let admin: Identifier = admin.as_str().unwrap().parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let now = unix_now();
    let added = runtime.block_on(async {
        let store = store(&k, project_id).await;
        let mut added = Vec::new();
        for i in 0..10_000u64 {
            let member = Member {
                identifier: identifier(i),
                attributes: BTreeMap::from([("component".to_owned(), format!("web-{i}"))]),
                added_at: now + i / 1000,
                added_by: admin,
                via: Member::VIA_ADMIN.to_owned(),
                credential_ttl: None,
                changed_at: None,
            };
            store
                .add_member(&member, &admin, member.added_at)
                .await
                .unwrap();
            added.push(member.identifier.to_string());
        }
        let limits = JoinLimits {
            per_source: 10_000,
            total: 10_000,
        };
        for i in 0..1_000u64 {
            let request = NewJoinRequest {
                id: format!("r{i:04}"),
                requester: identifier(1_000_000 + i),
                source: "10.0.0.1".to_owned(),
                attributes: BTreeMap::new(),
                lifetime: 3600,
                note: String::new(),
                expires_at: now + 3600,
            };
            store
                .file_join_request(&request, &|id: &str| format!("code-{id}"), limits, now)
                .await
                .unwrap();
        }
        store.close().await;
        added
    });

    let started = Instant::now();
    let listed = k.json(&["project", "member", "list"]);
    eprintln!("10,000 members listed in {:?}", started.elapsed());
    let listed: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["identifier"].as_str().unwrap())
        .collect();
    // Every one, in the order they were added (by second, then identifier).
    assert_eq!(listed.len(), 10_000);
    let mut expected = added.clone();
    expected.sort_by_key(|id| {
        let i = added.iter().position(|a| a == id).unwrap();
        (i / 1000, id.clone())
    });
    assert_eq!(listed, expected);

    let started = Instant::now();
    let requests = k.json(&["project", "requests", "list"]);
    eprintln!("1,000 pending requests listed in {:?}", started.elapsed());
    let ids: Vec<&str> = requests
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..1_000).map(|i| format!("r{i:04}")).collect();
    assert_eq!(ids, expected);

    // 11,000 changes were audited; the newest 5,000 come back, oldest of them first, the
    // last one the last request filed.
    let started = Instant::now();
    let audit = k.json(&["project", "audit", "--limit", "5000"]);
    eprintln!("5,000 audit entries listed in {:?}", started.elapsed());
    let audit = audit.as_array().unwrap();
    assert_eq!(audit.len(), 5_000);
    let last = &audit[4_999];
    assert!(last.to_string().contains("r0999"), "{last}");
    let first_request = audit
        .iter()
        .position(|e| e.to_string().contains("r0000"))
        .unwrap();
    assert_eq!(
        first_request, 4_000,
        "the 1,000 filings are the newest, in order"
    );
}
