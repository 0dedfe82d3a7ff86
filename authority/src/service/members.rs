//! The members service ([`MEMBERS_SERVICE`]): admins and enrollers list and show members;
//! admins add and delete them; admins and enrollers update their attributes (enrollers never
//! the role, which only admins grant). Every change is audited by the store in the same
//! transaction, and deletions and changes are appended to the membership feed there too.
//!
//! [`MEMBERS_SERVICE`]: crate::api::MEMBERS_SERVICE

use std::collections::{BTreeMap, BTreeSet};

use kith_identity::{Identifier, check_attribute};
use tracing::info;

use super::answer::{Answer, bad_request, forbidden, full_page, page_request, store_failed};
use super::checks::{check_member_attributes, parse_identifier};
use super::state::Authority;
use super::wire::member_info;
use crate::api::{
    ApiError, ErrorKind, MemberChange, MembersRequest, PROJECT_ID_ATTRIBUTE, Page, ROLE_ATTRIBUTE,
};
use crate::store::{Member, PageKey};

fn not_a_member() -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        "there is no member with this identifier",
    )
}

impl Authority {
    pub(super) async fn members(
        &self,
        caller: &Identifier,
        request: MembersRequest,
    ) -> Result<Answer, ApiError> {
        const READERS: &str = "only the project's admins and enrollers may list members";
        const WRITERS: &str = "only the project's admins may add or delete members";
        let store = &self.shared.store;
        match request {
            MembersRequest::List { after, limit } => {
                self.admin_or_enroller(caller, READERS).await?;
                let (after, limit) = page_request(after.as_deref(), limit)?;
                let members = store
                    .members_page(after.as_ref(), limit)
                    .await
                    .map_err(|e| store_failed("listing members", &e))?;
                let next = full_page(&members, limit, |m| PageKey {
                    at: m.added_at,
                    key: m.identifier.to_string(),
                });
                Ok(Answer::Members(Page {
                    items: members.into_iter().map(member_info).collect(),
                    next,
                }))
            }
            MembersRequest::Show { identifier } => {
                self.admin_or_enroller(caller, READERS).await?;
                let identifier = parse_identifier(&identifier)?;
                match self.member(&identifier).await? {
                    Some(member) => Ok(Answer::Member(member_info(member))),
                    None => Err(not_a_member()),
                }
            }
            MembersRequest::Add {
                identifier,
                attributes,
            } => {
                self.admin_only(caller, WRITERS)?;
                let identifier = parse_identifier(&identifier)?;
                check_member_attributes(&attributes)?;
                let now = self.now();
                let member = Member {
                    identifier,
                    attributes,
                    added_at: now,
                    added_by: *caller,
                    via: Member::VIA_ADMIN.to_owned(),
                    credential_ttl: None,
                    changed_at: None,
                };
                store
                    .add_member(&member, caller, now)
                    .await
                    .map_err(|e| store_failed("adding a member", &e))?;
                info!(member = %member.identifier, attributes = ?member.attributes, "member added");
                self.shared.feed.poke();
                Ok(Answer::Member(member_info(member)))
            }
            MembersRequest::Delete { identifier } => {
                self.admin_only(caller, WRITERS)?;
                let identifier = parse_identifier(&identifier)?;
                let deleted = store
                    .delete_member(&identifier, caller, self.now())
                    .await
                    .map_err(|e| store_failed("deleting a member", &e))?;
                match deleted {
                    Some(member) => {
                        info!(member = %member.identifier, "member deleted");
                        self.shared.feed.poke();
                        Ok(Answer::Member(member_info(member)))
                    }
                    None => Err(not_a_member()),
                }
            }
            MembersRequest::Update {
                identifier,
                set,
                remove,
            } => {
                const UPDATERS: &str = "only the project's admins and enrollers may update members";
                let enroller = self.admin_or_enroller(caller, UPDATERS).await?;
                let identifier = parse_identifier(&identifier)?;
                let remove = check_update(&set, remove)?;
                if enroller && (set.contains_key(ROLE_ATTRIBUTE) || remove.contains(ROLE_ATTRIBUTE))
                {
                    return Err(forbidden(&format!(
                        "enrollers may not add, change or remove the {ROLE_ATTRIBUTE} attribute; ask an admin"
                    )));
                }
                let now = self.now();
                if !self.fits_update(&identifier, &set, &remove).await? {
                    return Err(not_a_member());
                }
                let updated = store
                    .update_member(&identifier, &set, &remove, caller, now)
                    .await
                    .map_err(|e| store_failed("updating a member", &e))?;
                match updated {
                    Some(change) => {
                        info!(
                            member = %identifier,
                            before = ?change.before.attributes,
                            after = ?change.after.attributes,
                            "member updated"
                        );
                        self.shared.feed.poke();
                        Ok(Answer::MemberChange(MemberChange {
                            before: member_info(change.before),
                            after: member_info(change.after),
                        }))
                    }
                    None => Err(not_a_member()),
                }
            }
        }
    }

    /// Whether `identifier` is a member (`false` if not), refusing an update with `set` and
    /// `remove` that would leave it more attributes than a credential can carry. The store
    /// applies the update itself, in its own transaction; a concurrent update in between
    /// can at worst add what it was allowed to add on its own.
    async fn fits_update(
        &self,
        identifier: &Identifier,
        set: &BTreeMap<String, String>,
        remove: &BTreeSet<String>,
    ) -> Result<bool, ApiError> {
        let Some(member) = self.member(identifier).await? else {
            return Ok(false);
        };
        let mut attributes = member.attributes;
        attributes.extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
        attributes.retain(|name, _| !remove.contains(name));
        check_member_attributes(&attributes)?;
        Ok(true)
    }
}

/// Check an update's parts: something to do, attributes to set as [`check_member_attributes`]
/// checks them, names to remove that are attribute names (and never the project id, which
/// members do not hold), no name both set and removed. Returns the names to remove.
fn check_update(
    set: &BTreeMap<String, String>,
    remove: Vec<String>,
) -> Result<BTreeSet<String>, ApiError> {
    if set.is_empty() && remove.is_empty() {
        return Err(bad_request(
            "an update must set or remove at least one attribute",
        ));
    }
    check_member_attributes(set)?;
    let remove: BTreeSet<String> = remove.into_iter().collect();
    for name in &remove {
        check_attribute(name, "").map_err(|e| bad_request(e.to_string()))?;
        if name == PROJECT_ID_ATTRIBUTE {
            return Err(bad_request(format!(
                "the {PROJECT_ID_ATTRIBUTE} attribute is set by the authority; it cannot be removed"
            )));
        }
        if set.contains_key(name) {
            return Err(bad_request(format!(
                "attribute {name:?} is both set and removed; choose one"
            )));
        }
    }
    Ok(remove)
}
