//! The members service ([`MEMBERS_SERVICE`]): admins and enrollers list and show members;
//! admins add and delete them. Every change is audited by the store in the same
//! transaction.
//!
//! [`MEMBERS_SERVICE`]: crate::api::MEMBERS_SERVICE

use kith_identity::Identifier;
use tracing::info;

use super::answer::{Answer, full_page, page_request, store_failed};
use super::checks::{check_member_attributes, parse_identifier};
use super::state::Authority;
use super::wire::member_info;
use crate::api::{ApiError, ErrorKind, MembersRequest, Page};
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
                };
                store
                    .add_member(&member, caller, now)
                    .await
                    .map_err(|e| store_failed("adding a member", &e))?;
                info!(member = %member.identifier, attributes = ?member.attributes, "member added");
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
                        Ok(Answer::Member(member_info(member)))
                    }
                    None => Err(not_a_member()),
                }
            }
        }
    }
}
