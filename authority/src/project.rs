//! Project descriptions (DESIGN §5, §6): everything a member needs to reach a project and to
//! trust its authority — the project's name and id, the authority's full identity and route,
//! and the project node's identifier and route. `kith project import|export|show` read and
//! write the JSON form; enrollment tickets embed the compact CBOR form.
//!
//! Both decoders are strict. The JSON form refuses unknown fields, versions other than 1 and
//! files over [`MAX_PROJECT_JSON`]; the CBOR form checks every length against a named maximum
//! before it reads further. Either way the authority's identity must import (its key history
//! verifies), and in JSON its stated identifier must be the one the identity has.
//!
//! This module holds no secrets and does no I/O: reading files is the caller's business.
//!
//! [`MAX_PROJECT_JSON`]: crate::project::MAX_PROJECT_JSON

use kith_identity::hex::{self, HexError};
use kith_identity::{IDENTIFIER_LEN, Identifier, Identity};
use kith_transport::MultiAddr;
use minicbor::{Decoder, Encoder};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::error::ProjectError;

/// 64 KiB: the largest project file accepted. A real one is about 1 KiB (the authority's
/// identity grows by ~200 bytes per key rotation); the cap bounds what a hostile file costs.
pub const MAX_PROJECT_JSON: usize = 64 * 1024;

/// 64 bytes: the longest project name; it is typed on command lines and shown in lists.
pub const MAX_NAME_LEN: usize = 64;

/// 32 hex digits: a project id is 16 random bytes, enough that ids never collide.
pub const ID_LEN: usize = 32;

/// 1 KiB: the longest text field accepted in the CBOR form (name, id, route) and the longest
/// route in the JSON form, checked before the field is parsed. Routes are far shorter in
/// practice; this bounds parsing work.
pub const MAX_CBOR_TEXT: usize = 1024;

/// 16 KiB: the longest exported identity accepted. `MAX_CHANGES` (64) key changes of about
/// 215 bytes each fit; anything longer cannot be a valid identity.
pub const MAX_IDENTITY_LEN: usize = 16 * 1024;

/// The only version of the JSON form.
pub(crate) const JSON_VERSION: u64 = 1;

/// Items in the CBOR form: name, id, authority identity, authority route, project node
/// identifier, project node route.
const CBOR_ITEMS: u64 = 6;

/// How much of a refused value an error repeats: enough to recognise it, not a whole file.
const SHOWN_CHARS: usize = 80;

/// A project: its name and id, its authority, and its project node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// The project's name: 1 to 64 of `A-Z a-z 0-9 _ -`.
    pub name: String,
    /// The project's id: 32 lowercase hex digits (see [`Project::new_id`]).
    pub id: String,
    /// The authority's identity with its full key history.
    pub authority: Identity,
    /// Where the authority listens, e.g. `/ip4/127.0.0.1/tcp/4000`.
    pub authority_route: MultiAddr,
    /// Where the project node listens (today the authority's own node).
    pub project_route: MultiAddr,
    /// The project node's identifier.
    pub project_identifier: Identifier,
}

impl Project {
    /// A fresh project id: 16 random bytes as 32 lowercase hex digits.
    pub fn new_id() -> String {
        let mut bytes = [0u8; ID_LEN / 2];
        rand::rng().fill_bytes(&mut bytes);
        hex::encode(&bytes)
    }

    /// The authority's identifier.
    pub fn authority_identifier(&self) -> &Identifier {
        self.authority.identifier()
    }

    /// Check every field the decoders check, so that what is encoded also decodes: the name,
    /// the id, and the lengths of the routes and the identity.
    pub fn check(&self) -> Result<(), ProjectError> {
        check_name(&self.name)?;
        check_id(&self.id)?;
        let identity = self.authority.export().len();
        if identity > MAX_IDENTITY_LEN {
            return Err(ProjectError::TooLong {
                field: "authority.identity",
                len: identity,
                max: MAX_IDENTITY_LEN,
            });
        }
        for (field, route) in [
            ("authority.route", &self.authority_route),
            ("project_node.route", &self.project_route),
        ] {
            let len = route.to_string().len();
            if len > MAX_CBOR_TEXT {
                return Err(ProjectError::TooLong {
                    field,
                    len,
                    max: MAX_CBOR_TEXT,
                });
            }
        }
        Ok(())
    }

    /// The JSON form, pretty-printed, fields in a fixed order.
    pub fn to_json(&self) -> String {
        // Serializing plain strings and integers cannot fail.
        serde_json::to_string_pretty(&ProjectJson::from(self)).unwrap_or_default()
    }

    /// Parse and verify the JSON form.
    pub fn from_json(text: &str) -> Result<Project, ProjectError> {
        if text.len() > MAX_PROJECT_JSON {
            return Err(ProjectError::TooLarge {
                len: text.len(),
                max: MAX_PROJECT_JSON,
            });
        }
        let json: ProjectJson = serde_json::from_str(text).map_err(ProjectError::Json)?;
        json.into_project()
    }

    /// Append the CBOR form: `[name, id, authority identity (bytes), authority route,
    /// project node identifier (20 bytes), project node route]`.
    pub fn encode_cbor(&self, e: &mut Encoder<Vec<u8>>) {
        // Writing to a Vec cannot fail.
        let _ = e
            .array(CBOR_ITEMS)
            .and_then(|e| e.str(&self.name))
            .and_then(|e| e.str(&self.id))
            .and_then(|e| e.bytes(&self.authority.export()))
            .and_then(|e| e.str(&self.authority_route.to_string()))
            .and_then(|e| e.bytes(self.project_identifier.as_bytes()))
            .and_then(|e| e.str(&self.project_route.to_string()));
    }

    /// Read the CBOR form written by [`Project::encode_cbor`], leaving the decoder after it.
    pub fn decode_cbor(d: &mut Decoder<'_>) -> Result<Project, ProjectError> {
        match d.array().map_err(cbor("project"))? {
            Some(CBOR_ITEMS) => {}
            _ => {
                return Err(ProjectError::Shape {
                    field: "project",
                    problem: "must be an array of 6 items",
                });
            }
        }
        let name = bounded_str(d, "name", MAX_CBOR_TEXT)?;
        check_name(name)?;
        let id = bounded_str(d, "id", MAX_CBOR_TEXT)?;
        check_id(id)?;
        let identity = d.bytes().map_err(cbor("authority.identity"))?;
        if identity.len() > MAX_IDENTITY_LEN {
            return Err(ProjectError::TooLong {
                field: "authority.identity",
                len: identity.len(),
                max: MAX_IDENTITY_LEN,
            });
        }
        let authority = Identity::import(identity, None).map_err(ProjectError::Identity)?;
        let authority_route = parse_route(
            "authority.route",
            bounded_str(d, "authority.route", MAX_CBOR_TEXT)?,
        )?;
        let project_identifier: [u8; IDENTIFIER_LEN] = d
            .bytes()
            .map_err(cbor("project_node.identifier"))?
            .try_into()
            .map_err(|_| ProjectError::Shape {
                field: "project_node.identifier",
                problem: "must be 20 bytes",
            })?;
        let project_route = parse_route(
            "project_node.route",
            bounded_str(d, "project_node.route", MAX_CBOR_TEXT)?,
        )?;
        Ok(Project {
            name: name.to_owned(),
            id: id.to_owned(),
            authority,
            authority_route,
            project_route,
            project_identifier: Identifier::from_bytes(project_identifier),
        })
    }
}

/// The JSON form. Field order here is the order written; unknown fields are refused.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProjectJson {
    version: u64,
    name: String,
    id: String,
    authority: AuthorityJson,
    project_node: ProjectNodeJson,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthorityJson {
    identifier: String,
    identity: String,
    route: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectNodeJson {
    identifier: String,
    route: String,
}

impl From<&Project> for ProjectJson {
    fn from(p: &Project) -> Self {
        ProjectJson {
            version: JSON_VERSION,
            name: p.name.clone(),
            id: p.id.clone(),
            authority: AuthorityJson {
                identifier: p.authority_identifier().to_string(),
                identity: hex::encode(&p.authority.export()),
                route: p.authority_route.to_string(),
            },
            project_node: ProjectNodeJson {
                identifier: p.project_identifier.to_string(),
                route: p.project_route.to_string(),
            },
        }
    }
}

impl ProjectJson {
    /// Check every field, in the order they are written, and build the project.
    pub(crate) fn into_project(self) -> Result<Project, ProjectError> {
        if self.version != JSON_VERSION {
            return Err(ProjectError::Version {
                found: self.version,
            });
        }
        check_name(&self.name)?;
        check_id(&self.id)?;
        let stated = parse_identifier("authority.identifier", &self.authority.identifier)?;
        let hex_text = &self.authority.identity;
        if hex_text.len() > 2 * MAX_IDENTITY_LEN {
            return Err(ProjectError::TooLong {
                field: "authority.identity",
                len: hex_text.len(),
                max: 2 * MAX_IDENTITY_LEN,
            });
        }
        let identity = hex::decode(hex_text).map_err(|e| hex_in_field(e, "authority.identity"))?;
        let authority = Identity::import(&identity, None).map_err(ProjectError::Identity)?;
        if *authority.identifier() != stated {
            return Err(ProjectError::IdentifierMismatch {
                stated,
                actual: *authority.identifier(),
            });
        }
        let authority_route = parse_route("authority.route", &self.authority.route)?;
        let project_identifier =
            parse_identifier("project_node.identifier", &self.project_node.identifier)?;
        let project_route = parse_route("project_node.route", &self.project_node.route)?;
        Ok(Project {
            name: self.name,
            id: self.id,
            authority,
            authority_route,
            project_route,
            project_identifier,
        })
    }
}

/// A project name: 1 to [`MAX_NAME_LEN`] of `A-Z a-z 0-9 _ -`.
pub fn check_name(name: &str) -> Result<(), ProjectError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ProjectError::Name { value: shown(name) })
    }
}

/// A project id: exactly [`ID_LEN`] lowercase hex digits.
pub fn check_id(id: &str) -> Result<(), ProjectError> {
    let ok = id.len() == ID_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ok {
        Ok(())
    } else {
        Err(ProjectError::Id { value: shown(id) })
    }
}

fn shown(s: &str) -> String {
    s.chars().take(SHOWN_CHARS).collect()
}

fn parse_identifier(field: &'static str, s: &str) -> Result<Identifier, ProjectError> {
    s.parse()
        .map_err(|source| ProjectError::Identifier { field, source })
}

/// A route of at most [`MAX_CBOR_TEXT`] bytes, in either form, so that a project read from
/// JSON can always be embedded in a ticket.
fn parse_route(field: &'static str, s: &str) -> Result<MultiAddr, ProjectError> {
    if s.len() > MAX_CBOR_TEXT {
        return Err(ProjectError::TooLong {
            field,
            len: s.len(),
            max: MAX_CBOR_TEXT,
        });
    }
    s.parse()
        .map_err(|source| ProjectError::Route { field, source })
}

fn cbor(field: &'static str) -> impl FnOnce(minicbor::decode::Error) -> ProjectError {
    move |source| ProjectError::Cbor { field, source }
}

/// A definite text string of at most `max` bytes, borrowed from the input.
fn bounded_str<'b>(
    d: &mut Decoder<'b>,
    field: &'static str,
    max: usize,
) -> Result<&'b str, ProjectError> {
    let s = d.str().map_err(cbor(field))?;
    if s.len() > max {
        return Err(ProjectError::TooLong {
            field,
            len: s.len(),
            max,
        });
    }
    Ok(s)
}

/// Say which field of a project holds text that is not hex.
fn hex_in_field(e: HexError, field: &'static str) -> ProjectError {
    match e {
        HexError::NotHex {
            character,
            position,
        } => ProjectError::NotHex {
            field,
            character,
            position,
        },
        HexError::OddLength { len } | HexError::WrongLength { len, .. } => {
            ProjectError::OddHex { field, len }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kith_identity::IdentitySecret;
    use proptest::prelude::*;

    /// A fixed authority identity: same key, same time, same identifier every run.
    pub(crate) fn authority() -> Identity {
        Identity::from_secret(&IdentitySecret::from_bytes(&[7u8; 32]), 1_700_000_000)
    }

    pub(crate) fn project() -> Project {
        Project {
            name: "default".to_owned(),
            id: "0123456789abcdef0123456789abcdef".to_owned(),
            authority: authority(),
            authority_route: "/ip4/127.0.0.1/tcp/4000".parse().unwrap(),
            project_route: "/dnsaddr/localhost/tcp/4000".parse().unwrap(),
            project_identifier: "I6c20e814b56579306f55c64e8747e6c1b4a53d9a".parse().unwrap(),
        }
    }

    fn json_value(p: &Project) -> serde_json::Value {
        serde_json::from_str(&p.to_json()).unwrap()
    }

    fn from_value(v: &serde_json::Value) -> Result<Project, ProjectError> {
        Project::from_json(&v.to_string())
    }

    fn cbor_of(p: &Project) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new());
        p.encode_cbor(&mut e);
        e.into_writer()
    }

    fn decode_all(bytes: &[u8]) -> Result<Project, ProjectError> {
        let mut d = Decoder::new(bytes);
        let p = Project::decode_cbor(&mut d)?;
        assert_eq!(d.position(), bytes.len(), "decode_cbor left bytes unread");
        Ok(p)
    }

    #[test]
    fn json_round_trips_with_fields_in_the_documented_order() {
        let p = project();
        let json = p.to_json();
        assert_eq!(Project::from_json(&json).unwrap(), p);
        let order = [
            "\"version\": 1",
            "\"name\"",
            "\"id\"",
            "\"authority\"",
            "\"identifier\": \"I5cdf9e2de0c5805006b8c277fb4d63a8cf9cde38\"",
            "\"identity\"",
            "\"route\": \"/ip4/127.0.0.1/tcp/4000\"",
            "\"project_node\"",
            "\"identifier\": \"I6c20e814b56579306f55c64e8747e6c1b4a53d9a\"",
            "\"route\": \"/dnsaddr/localhost/tcp/4000\"",
        ];
        let mut at = 0;
        for needle in order {
            let found = json[at..]
                .find(needle)
                .unwrap_or_else(|| panic!("{needle} missing or out of order in {json}"));
            at += found + needle.len();
        }
        assert_eq!(p.to_json(), Project::from_json(&json).unwrap().to_json());
    }

    #[test]
    fn authority_identifier_is_the_identitys() {
        assert_eq!(
            project().authority_identifier().to_string(),
            "I5cdf9e2de0c5805006b8c277fb4d63a8cf9cde38"
        );
    }

    #[test]
    fn new_ids_are_32_lowercase_hex_digits_and_differ() {
        let a = Project::new_id();
        let b = Project::new_id();
        check_id(&a).unwrap();
        check_id(&b).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn unknown_fields_are_refused_at_every_level() {
        for path in [&[][..], &["authority"][..], &["project_node"][..]] {
            let mut v = json_value(&project());
            let mut obj = &mut v;
            for key in path {
                obj = obj.get_mut(*key).unwrap();
            }
            obj.as_object_mut()
                .unwrap()
                .insert("extra".to_owned(), serde_json::json!(1));
            let err = from_value(&v).unwrap_err();
            assert!(matches!(err, ProjectError::Json(_)), "{path:?}: {err:?}");
            let chain = format!("{}", std::error::Error::source(&err).unwrap());
            assert!(chain.contains("unknown field `extra`"), "{chain}");
        }
    }

    #[test]
    fn missing_and_repeated_fields_are_refused() {
        let mut v = json_value(&project());
        v["authority"].as_object_mut().unwrap().remove("route");
        assert!(matches!(from_value(&v), Err(ProjectError::Json(_))));
        let json = project().to_json().replacen(
            "\"name\": \"default\",",
            "\"name\": \"default\", \"name\": \"other\",",
            1,
        );
        assert!(matches!(
            Project::from_json(&json),
            Err(ProjectError::Json(_))
        ));
    }

    #[test]
    fn only_version_1_is_read() {
        for version in [0, 2, u64::MAX] {
            let mut v = json_value(&project());
            v["version"] = serde_json::json!(version);
            let err = from_value(&v).unwrap_err();
            assert!(
                matches!(err, ProjectError::Version { found } if found == version),
                "{err:?}"
            );
            assert!(err.to_string().contains(&format!("version {version}")));
        }
    }

    #[test]
    fn a_stated_authority_identifier_that_is_not_the_identitys_names_both() {
        let other = "I6c20e814b56579306f55c64e8747e6c1b4a53d9a";
        let mut v = json_value(&project());
        v["authority"]["identifier"] = serde_json::json!(other);
        let err = from_value(&v).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "project: authority.identifier {other} does not match its identity \
                 (I5cdf9e2de0c5805006b8c277fb4d63a8cf9cde38)"
            )
        );
    }

    #[test]
    fn a_tampered_authority_identity_is_refused() {
        let mut v = json_value(&project());
        let hex = v["authority"]["identity"].as_str().unwrap().to_owned();
        // Flip one digit inside the signature at the end of the key change.
        let at = hex.len() - 10;
        let flipped = if &hex[at..at + 1] == "0" { "1" } else { "0" };
        let bad = format!("{}{flipped}{}", &hex[..at], &hex[at + 1..]);
        v["authority"]["identity"] = serde_json::json!(bad);
        assert!(matches!(from_value(&v), Err(ProjectError::Identity(_))));
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: [(&[&str], serde_json::Value, &str); 9] = [
            (&["name"], "".into(), "name \"\""),
            (&["name"], "has space".into(), "name \"has space\""),
            (&["name"], "x".repeat(65).into(), "letters, digits"),
            (
                &["id"],
                "0123456789ABCDEF0123456789ABCDEF".into(),
                "id \"0123",
            ),
            (
                &["authority", "identifier"],
                "Ixyz".into(),
                "authority.identifier is not",
            ),
            (&["authority", "identity"], "0g".into(), "'g' at position 2"),
            (
                &["authority", "identity"],
                "abc".into(),
                "odd number of hex digits (3)",
            ),
            (
                &["authority", "route"],
                "ip4/1.2.3.4".into(),
                "authority.route is not",
            ),
            (
                &["project_node", "route"],
                "/tcp/1".into(),
                "project_node.route is not",
            ),
        ];
        for (path, value, expected) in cases {
            let mut v = json_value(&project());
            let mut at = &mut v;
            for key in path {
                at = at.get_mut(*key).unwrap();
            }
            *at = value;
            let err = from_value(&v).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{path:?}: {err:?} lacks {expected:?}"
            );
        }
    }

    #[test]
    fn a_route_too_long_to_embed_in_a_ticket_is_refused_in_json_too() {
        let mut v = json_value(&project());
        let long = format!("/service/{}", "a".repeat(MAX_CBOR_TEXT));
        v["project_node"]["route"] = serde_json::json!(long);
        assert!(matches!(
            from_value(&v),
            Err(ProjectError::TooLong {
                field: "project_node.route",
                max: MAX_CBOR_TEXT,
                ..
            })
        ));
    }

    #[test]
    fn an_oversized_file_is_refused_before_parsing() {
        // Not JSON at all: the size check must come first.
        let text = "x".repeat(MAX_PROJECT_JSON + 1);
        assert!(matches!(
            Project::from_json(&text),
            Err(ProjectError::TooLarge {
                len,
                max: MAX_PROJECT_JSON
            }) if len == MAX_PROJECT_JSON + 1
        ));
    }

    #[test]
    fn cbor_round_trips_and_every_truncation_is_refused() {
        let p = project();
        let bytes = cbor_of(&p);
        assert_eq!(decode_all(&bytes).unwrap(), p);
        for cut in 0..bytes.len() {
            assert!(
                Project::decode_cbor(&mut Decoder::new(&bytes[..cut])).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn cbor_lengths_are_checked_before_parsing() {
        let long = "a".repeat(MAX_CBOR_TEXT + 1);
        let mut e = Encoder::new(Vec::new());
        e.array(6).unwrap().str(&long).unwrap();
        let err = decode_all(&e.into_writer()).unwrap_err();
        assert!(
            matches!(
                err,
                ProjectError::TooLong {
                    field: "name",
                    max: MAX_CBOR_TEXT,
                    ..
                }
            ),
            "{err:?}"
        );

        let mut e = Encoder::new(Vec::new());
        e.array(6)
            .unwrap()
            .str("p")
            .unwrap()
            .str(&"0".repeat(32))
            .unwrap()
            .bytes(&vec![0u8; MAX_IDENTITY_LEN + 1])
            .unwrap();
        let err = decode_all(&e.into_writer()).unwrap_err();
        assert!(
            matches!(
                err,
                ProjectError::TooLong {
                    field: "authority.identity",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn cbor_of_the_wrong_shape_is_refused() {
        let p = project();
        let mut e = Encoder::new(Vec::new());
        e.array(5).unwrap();
        assert!(matches!(
            decode_all(&e.into_writer()),
            Err(ProjectError::Shape { .. })
        ));
        let mut e = Encoder::new(Vec::new());
        e.array(6)
            .unwrap()
            .str(&p.name)
            .unwrap()
            .str(&p.id)
            .unwrap()
            .bytes(&p.authority.export())
            .unwrap()
            .str("/ip4/127.0.0.1/tcp/4000")
            .unwrap()
            .bytes(&[0u8; 19])
            .unwrap();
        assert!(matches!(
            decode_all(&e.into_writer()),
            Err(ProjectError::Shape {
                field: "project_node.identifier",
                ..
            })
        ));
    }

    #[test]
    fn check_finds_what_the_decoders_would_refuse() {
        project().check().unwrap();
        let mut p = project();
        p.name = "no spaces".to_owned();
        assert!(matches!(p.check(), Err(ProjectError::Name { .. })));
        let mut p = project();
        p.id = "short".to_owned();
        assert!(matches!(p.check(), Err(ProjectError::Id { .. })));
    }

    fn route() -> impl Strategy<Value = MultiAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), 1..=u16::MAX)
                .prop_map(|(ip, port)| format!("/ip4/{}/tcp/{port}", std::net::Ipv4Addr::from(ip))),
            ("[a-z][a-z0-9-]{0,20}", 1..=u16::MAX)
                .prop_map(|(host, port)| format!("/dnsaddr/{host}/tcp/{port}")),
            "[a-z]{1,10}".prop_map(|n| format!("/node/{n}/service/api")),
        ]
        .prop_map(|s| s.parse().unwrap())
    }

    pub(crate) fn any_project() -> impl Strategy<Value = Project> {
        (
            "[A-Za-z0-9_-]{1,64}",
            "[0-9a-f]{32}",
            route(),
            route(),
            any::<[u8; 20]>(),
        )
            .prop_map(|(name, id, authority_route, project_route, node)| Project {
                name,
                id,
                authority: authority(),
                authority_route,
                project_route,
                project_identifier: Identifier::from_bytes(node),
            })
    }

    proptest! {
        #[test]
        fn json_and_cbor_round_trip(p in any_project()) {
            p.check().unwrap();
            prop_assert_eq!(Project::from_json(&p.to_json()).unwrap(), p.clone());
            prop_assert_eq!(decode_all(&cbor_of(&p)).unwrap(), p);
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,300}") {
            let _ = Project::from_json(&s);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Project::decode_cbor(&mut Decoder::new(&bytes));
        }
    }
}
