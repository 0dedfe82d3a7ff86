//! Checks on what a request asks for, shared by several services: the attributes a member
//! is given, identifiers typed by an admin, and who may be made an enroller.

use std::collections::BTreeMap;

use kith_identity::{Identifier, MAX_ATTRIBUTES, check_attribute};

use super::answer::bad_request;
use crate::api::{ApiError, ENROLLER_ROLE, PROJECT_ID_ATTRIBUTE, ROLE_ATTRIBUTE};

/// The most attributes a ticket or an admin may give a member: the credential also carries
/// [`PROJECT_ID_ATTRIBUTE`], and must stay within [`MAX_ATTRIBUTES`].
pub const MAX_MEMBER_ATTRIBUTES: usize = MAX_ATTRIBUTES - 1;

/// Check the attributes a ticket or an admin gives a member: each name and value valid, no
/// more than [`MAX_MEMBER_ATTRIBUTES`], and no [`PROJECT_ID_ATTRIBUTE`] (the authority sets
/// it).
pub(crate) fn check_member_attributes(
    attributes: &BTreeMap<String, String>,
) -> Result<(), ApiError> {
    if attributes.len() > MAX_MEMBER_ATTRIBUTES {
        return Err(bad_request(format!(
            "{} attributes; a member may have at most {MAX_MEMBER_ATTRIBUTES}",
            attributes.len()
        )));
    }
    if attributes.contains_key(PROJECT_ID_ATTRIBUTE) {
        return Err(bad_request(format!(
            "the {PROJECT_ID_ATTRIBUTE} attribute is set by the authority; leave it out"
        )));
    }
    for (name, value) in attributes {
        check_attribute(name, value).map_err(|e| bad_request(e.to_string()))?;
    }
    Ok(())
}

/// Whether `attributes` make their holder an enroller: only admins may grant that.
pub(crate) fn grants_enroller(attributes: &BTreeMap<String, String>) -> bool {
    attributes.get(ROLE_ATTRIBUTE).map(String::as_str) == Some(ENROLLER_ROLE)
}

pub(crate) fn parse_identifier(text: &str) -> Result<Identifier, ApiError> {
    text.parse()
        .map_err(|e: kith_identity::IdentifierError| bad_request(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ErrorKind;

    #[test]
    fn member_attributes_are_bounded_and_may_not_set_the_project_id() {
        let ok: BTreeMap<String, String> = [("component".into(), "db".into())].into();
        assert!(check_member_attributes(&ok).is_ok());
        let project: BTreeMap<String, String> = [(PROJECT_ID_ATTRIBUTE.into(), "p".into())].into();
        assert_eq!(
            check_member_attributes(&project).unwrap_err().kind,
            ErrorKind::BadRequest
        );
        let spaced: BTreeMap<String, String> = [("a b".into(), "c".into())].into();
        assert!(check_member_attributes(&spaced).is_err());
        let full: BTreeMap<String, String> = (0..MAX_MEMBER_ATTRIBUTES)
            .map(|i| (format!("a{i}"), String::new()))
            .collect();
        assert!(check_member_attributes(&full).is_ok());
        let mut over = full;
        over.insert("one-more".into(), String::new());
        assert!(check_member_attributes(&over).is_err());
    }
}
