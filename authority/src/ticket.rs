//! Enrollment tickets (DESIGN §5 "Tickets", "Encodings", "Inspectable tickets"): a one-time
//! code plus the non-secret data needed to redeem it — the project to reach and trust, and,
//! for `kith project ticket show`, the attributes and expiry the ticket was made with. The
//! authority's stored copy of those stays the truth; the copy in the ticket is informative.
//!
//! # Encodings
//!
//! The binary form is `version (1 byte, = 1) ‖ CBOR ‖ checksum (4 bytes)`. The CBOR is an
//! array of five items: the code (32 bytes), the project (the form of [`encode_cbor`]), the
//! attributes (a map of text to text), `expires_at` (u64) and `usage_count` (u32). The
//! checksum is the first 4 bytes of `SHA-256("kith/ticket-checksum/1\0" ‖ everything before
//! it)`. It is not a signature (anyone can recompute it); it exists so that a ticket damaged
//! in copy and paste is refused here, with a message that says so, before anything is sent.
//!
//! - [`Text`] (the default): base64url without padding of the binary form.
//! - [`Hex`]: lowercase hex of the binary form.
//! - [`Legacy`]: lowercase hex of a JSON object with the fields `one_time_code` (64 hex
//!   digits), `project` (the project file's object), `attributes`, `expires_at` and
//!   `usage_count`. It has no checksum.
//!
//! # Telling the encodings apart
//!
//! [`decode`] trims surrounding ASCII whitespace, then: if every character is a hex digit
//! (either case) the ticket is hex, and the first decoded byte picks the form — `{` (`7b`) is
//! legacy JSON, anything else is a binary form whose first byte is its version. Otherwise the
//! ticket is base64url.
//!
//! This never takes a base64url ticket for hex: the binary form always starts with the
//! version byte `0x01` and then the CBOR array header `0x85`, and the base64url of `01 85` is
//! `AY…` — `Y` is not a hex digit. Hex tickets always start `01` or `7b`.
//!
//! # Secrets
//!
//! The one-time code never appears in `Debug` output or in an error, and [`OneTimeCode`] has
//! no `Display`. The authority stores only [`hash`] of the code, and [`id`] is derived from
//! that hash, so an admin can match a ticket to the authority's list without the code.
//!
//! [`encode_cbor`]: crate::project::Project::encode_cbor
//! [`Text`]: crate::ticket::Encoding::Text
//! [`Hex`]: crate::ticket::Encoding::Hex
//! [`Legacy`]: crate::ticket::Encoding::Legacy
//! [`decode`]: crate::ticket::Ticket::decode
//! [`OneTimeCode`]: crate::ticket::OneTimeCode
//! [`hash`]: crate::ticket::OneTimeCode::hash
//! [`id`]: crate::ticket::Ticket::id

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kith_identity::{MAX_ATTRIBUTE_NAME, MAX_ATTRIBUTE_VALUE, MAX_ATTRIBUTES, check_attribute};
use minicbor::{Decoder, Encoder};
use rand::RngCore;
use serde::de::{Error as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

use kith_identity::hex::{self, HexError};

use crate::error::TicketError;
use crate::project::{Project, ProjectJson};

/// 32 bytes: the one-time code's length; 256 random bits cannot be guessed.
pub const CODE_LEN: usize = 32;

/// The binary form's version, its first byte.
pub const VERSION: u8 = 1;

/// 4 bytes: the checksum's length. It catches accidental damage (a wrong ticket passes by
/// chance once in 2³²), not forgery; the authority checks the code itself.
pub const CHECKSUM_LEN: usize = 4;

/// 64 KiB: the longest ticket accepted, as text and as binary, checked before decoding. A
/// ticket is usually under 1 KiB; the cap bounds what a hostile file or variable costs.
pub const MAX_TICKET_LEN: usize = 64 * 1024;

/// Hash domain of the one-time code; the authority stores this hash, never the code.
const CODE_TAG: &[u8] = b"kith/ticket-code/1\0";

/// Hash domain of the binary form's checksum.
const CHECKSUM_TAG: &[u8] = b"kith/ticket-checksum/1\0";

/// Items in the binary form's CBOR array.
const TICKET_ITEMS: u64 = 5;

/// 12 hex digits: [`Ticket::id`]'s length, the same as the authority's stored ticket ids.
const ID_LEN: usize = 12;

/// How much of a refused attribute name an error repeats.
const SHOWN_CHARS: usize = 40;

/// A ticket's secret: 32 random bytes, redeemable with the authority. Never printed: `Debug`
/// shows `OneTimeCode(…)` and there is no `Display`.
#[derive(Clone)]
pub struct OneTimeCode([u8; CODE_LEN]);

impl OneTimeCode {
    /// A fresh code from the thread's cryptographically secure generator.
    pub fn random() -> Self {
        let mut bytes = [0u8; CODE_LEN];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// `SHA-256("kith/ticket-code/1\0" ‖ code)`: what the authority stores and looks up.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(CODE_TAG);
        h.update(self.0);
        h.finalize().into()
    }

    /// The code's bytes, to send to the authority.
    pub fn as_bytes(&self) -> &[u8; CODE_LEN] {
        &self.0
    }

    /// A code from its bytes.
    pub fn from_bytes(bytes: [u8; CODE_LEN]) -> Self {
        Self(bytes)
    }
}

/// Compares the hashes, not the codes: equal hashes mean equal codes, and the time taken
/// says nothing about the code's bytes.
impl PartialEq for OneTimeCode {
    fn eq(&self, other: &Self) -> bool {
        self.hash() == other.hash()
    }
}

impl Eq for OneTimeCode {}

impl fmt::Debug for OneTimeCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OneTimeCode(…)")
    }
}

/// An enrollment ticket.
#[derive(Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The secret that redeems it.
    pub code: OneTimeCode,
    /// The project it enrolls into.
    pub project: Project,
    /// The attributes a redeemer gets (informative; the authority's copy is the truth).
    pub attributes: BTreeMap<String, String>,
    /// When it stops being redeemable, in Unix seconds (informative, like `attributes`).
    pub expires_at: u64,
    /// How many identities it may enroll (informative, like `attributes`).
    pub usage_count: u32,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("id", &self.id())
            .field("code", &self.code)
            .field("project", &self.project)
            .field("attributes", &self.attributes)
            .field("expires_at", &self.expires_at)
            .field("usage_count", &self.usage_count)
            .finish()
    }
}

/// How a ticket is written out. [`Ticket::decode`] reads all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// base64url without padding of the binary form (the default).
    #[default]
    Text,
    /// Lowercase hex of the binary form (`--hex`).
    Hex,
    /// Lowercase hex of the JSON form (`--legacy`); no checksum.
    Legacy,
}

/// The checksum of a binary ticket's leading bytes (everything before the checksum):
/// the first [`CHECKSUM_LEN`] bytes of `SHA-256("kith/ticket-checksum/1\0" ‖ bytes)`.
pub fn checksum(bytes: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut h = Sha256::new();
    h.update(CHECKSUM_TAG);
    h.update(bytes);
    let digest: [u8; 32] = h.finalize().into();
    let mut out = [0u8; CHECKSUM_LEN];
    for (o, d) in out.iter_mut().zip(digest) {
        *o = d;
    }
    out
}

impl Ticket {
    /// A short, non-secret name for the ticket: the first 12 hex digits of
    /// [`OneTimeCode::hash`], which is what the authority stores, so the same id can be shown
    /// on both sides.
    pub fn id(&self) -> String {
        let mut id = hex::encode(&self.code.hash());
        id.truncate(ID_LEN);
        id
    }

    /// Write the ticket in `encoding`.
    pub fn encode(&self, encoding: Encoding) -> String {
        match encoding {
            Encoding::Text => URL_SAFE_NO_PAD.encode(self.to_bytes()),
            Encoding::Hex => hex::encode(&self.to_bytes()),
            Encoding::Legacy => {
                let json = LegacyJson {
                    one_time_code: hex::encode(self.code.as_bytes()),
                    project: ProjectJson::from(&self.project),
                    attributes: self.attributes.clone(),
                    expires_at: self.expires_at,
                    usage_count: self.usage_count,
                };
                // Serializing strings, maps and integers cannot fail.
                hex::encode(serde_json::to_string(&json).unwrap_or_default().as_bytes())
            }
        }
    }

    /// Read a ticket in any of the three encodings (see the module documentation for how they
    /// are told apart). Surrounding ASCII whitespace is ignored, so a ticket file with or
    /// without a final newline reads the same.
    pub fn decode(input: &str) -> Result<Ticket, TicketError> {
        let text = input.trim_ascii();
        if text.len() > MAX_TICKET_LEN {
            return Err(TicketError::TooLarge {
                len: text.len(),
                max: MAX_TICKET_LEN,
            });
        }
        if text.is_empty() {
            return Err(TicketError::Empty);
        }
        let mut all_hex = true;
        for (i, character) in text.chars().enumerate() {
            let position = i.saturating_add(1);
            if character.is_whitespace() {
                return Err(TicketError::Whitespace {
                    character,
                    position,
                });
            }
            if !(character.is_ascii_alphanumeric() || character == '-' || character == '_') {
                return Err(TicketError::InvalidCharacter {
                    character,
                    position,
                });
            }
            all_hex &= character.is_ascii_hexdigit();
        }
        if !all_hex {
            let bytes = URL_SAFE_NO_PAD.decode(text).map_err(TicketError::Base64)?;
            return Self::from_bytes(&bytes);
        }
        let bytes = hex::decode(text).map_err(|e| match e {
            HexError::OddLength { len } | HexError::WrongLength { len, .. } => {
                TicketError::OddHexLength { len }
            }
            // Every character was checked to be a hex digit above.
            HexError::NotHex {
                character,
                position,
            } => TicketError::InvalidCharacter {
                character,
                position,
            },
        })?;
        if bytes.first() == Some(&b'{') {
            Self::from_legacy_json(&bytes)
        } else {
            Self::from_bytes(&bytes)
        }
    }

    /// The binary form: version, CBOR, checksum.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut e = Encoder::new(vec![VERSION]);
        // Writing to a Vec cannot fail.
        let _ = e
            .array(TICKET_ITEMS)
            .and_then(|e| e.bytes(self.code.as_bytes()));
        self.project.encode_cbor(&mut e);
        let _ = e.map(u64::try_from(self.attributes.len()).unwrap_or(u64::MAX));
        for (name, value) in &self.attributes {
            let _ = e.str(name).and_then(|e| e.str(value));
        }
        let _ = e.u64(self.expires_at).and_then(|e| e.u32(self.usage_count));
        let mut bytes = e.into_writer();
        let sum = checksum(&bytes);
        bytes.extend_from_slice(&sum);
        bytes
    }

    /// Read the binary form. Checks, in order: the length, the version, the checksum, then the
    /// contents, and finally that the ticket re-encodes to exactly these bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Ticket, TicketError> {
        if bytes.len() > MAX_TICKET_LEN {
            return Err(TicketError::TooLarge {
                len: bytes.len(),
                max: MAX_TICKET_LEN,
            });
        }
        // `signed` is everything the checksum covers: the version byte and the body.
        let (signed, sum) = bytes
            .split_at_checked(bytes.len().saturating_sub(CHECKSUM_LEN))
            .unwrap_or_default();
        let Some((&version, body)) = signed.split_first() else {
            return Err(TicketError::Truncated { len: bytes.len() });
        };
        if version != VERSION {
            // A version-1 ticket whose first byte was damaged still carries a version-1
            // checksum over the original byte: call that damage, not a newer format.
            let mut repaired = signed.to_vec();
            if let Some(first) = repaired.first_mut() {
                *first = VERSION;
            }
            if checksum(&repaired) == sum {
                return Err(TicketError::Checksum);
            }
            return Err(TicketError::UnknownVersion { version });
        }
        if checksum(signed) != sum {
            return Err(TicketError::Checksum);
        }
        let ticket = decode_body(body)?;
        if ticket.to_bytes() != bytes {
            return Err(TicketError::NonCanonical);
        }
        Ok(ticket)
    }

    /// Check everything a decoder checks, so that a ticket that is printed can also be read:
    /// the project, the attributes, and that every encoding fits in [`MAX_TICKET_LEN`].
    pub fn check(&self) -> Result<(), TicketError> {
        self.project.check().map_err(TicketError::Project)?;
        if self.attributes.len() > MAX_ATTRIBUTES {
            return Err(TicketError::TooManyAttributes {
                count: u64::try_from(self.attributes.len()).unwrap_or(u64::MAX),
                max: MAX_ATTRIBUTES,
            });
        }
        for (name, value) in &self.attributes {
            check_attribute(name, value).map_err(|source| TicketError::Attribute {
                name: shown(name),
                source,
            })?;
        }
        for encoding in [Encoding::Text, Encoding::Hex, Encoding::Legacy] {
            let len = self.encode(encoding).len();
            if len > MAX_TICKET_LEN {
                return Err(TicketError::TooLarge {
                    len,
                    max: MAX_TICKET_LEN,
                });
            }
        }
        Ok(())
    }

    fn from_legacy_json(json: &[u8]) -> Result<Ticket, TicketError> {
        let legacy: LegacyJson = serde_json::from_slice(json).map_err(TicketError::Json)?;
        let code: [u8; CODE_LEN] = hex::decode(&legacy.one_time_code)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(TicketError::Code)?;
        let project = legacy
            .project
            .into_project()
            .map_err(TicketError::Project)?;
        for (name, value) in &legacy.attributes {
            check_attribute(name, value).map_err(|source| TicketError::Attribute {
                name: shown(name),
                source,
            })?;
        }
        Ok(Ticket {
            code: OneTimeCode(code),
            project,
            attributes: legacy.attributes,
            expires_at: legacy.expires_at,
            usage_count: legacy.usage_count,
        })
    }
}

/// The CBOR array of the binary form, between the version byte and the checksum.
fn decode_body(body: &[u8]) -> Result<Ticket, TicketError> {
    let mut d = Decoder::new(body);
    if d.array().map_err(cbor("ticket"))? != Some(TICKET_ITEMS) {
        return Err(TicketError::Shape {
            field: "ticket",
            problem: "must be an array of 5 items",
        });
    }
    let code: [u8; CODE_LEN] = d
        .bytes()
        .map_err(cbor("one_time_code"))?
        .try_into()
        .map_err(|_| TicketError::Shape {
            field: "one_time_code",
            problem: "must be 32 bytes",
        })?;
    let project = Project::decode_cbor(&mut d).map_err(TicketError::Project)?;
    let attributes = decode_attributes(&mut d)?;
    let expires_at = d.u64().map_err(cbor("expires_at"))?;
    let usage_count = d.u32().map_err(cbor("usage_count"))?;
    let count = body.len().saturating_sub(d.position());
    if count != 0 {
        return Err(TicketError::TrailingBytes { count });
    }
    Ok(Ticket {
        code: OneTimeCode(code),
        project,
        attributes,
        expires_at,
        usage_count,
    })
}

/// A definite map of at most [`MAX_ATTRIBUTES`] valid attributes, names strictly increasing.
fn decode_attributes(d: &mut Decoder<'_>) -> Result<BTreeMap<String, String>, TicketError> {
    let Some(count) = d.map().map_err(cbor("attributes"))? else {
        return Err(TicketError::Shape {
            field: "attributes",
            problem: "must be a map of definite length",
        });
    };
    if usize::try_from(count).map_or(true, |n| n > MAX_ATTRIBUTES) {
        return Err(TicketError::TooManyAttributes {
            count,
            max: MAX_ATTRIBUTES,
        });
    }
    let mut attributes = BTreeMap::new();
    let mut last: Option<&str> = None;
    for _ in 0..count {
        let name = bounded_str(d, "attribute name", MAX_ATTRIBUTE_NAME)?;
        let value = bounded_str(d, "attribute value", MAX_ATTRIBUTE_VALUE)?;
        check_attribute(name, value).map_err(|source| TicketError::Attribute {
            name: shown(name),
            source,
        })?;
        if last.is_some_and(|l| l >= name) {
            return Err(TicketError::AttributeOrder { name: shown(name) });
        }
        last = Some(name);
        attributes.insert(name.to_owned(), value.to_owned());
    }
    Ok(attributes)
}

/// A definite text string of at most `max` bytes, borrowed from the input.
fn bounded_str<'b>(
    d: &mut Decoder<'b>,
    field: &'static str,
    max: usize,
) -> Result<&'b str, TicketError> {
    let s = d.str().map_err(cbor(field))?;
    if s.len() > max {
        return Err(TicketError::TooLong {
            field,
            len: s.len(),
            max,
        });
    }
    Ok(s)
}

fn cbor(field: &'static str) -> impl FnOnce(minicbor::decode::Error) -> TicketError {
    move |source| TicketError::Cbor { field, source }
}

fn shown(s: &str) -> String {
    s.chars().take(SHOWN_CHARS).collect()
}

/// The legacy JSON form. Unknown fields are refused. `one_time_code` is read as a string
/// whatever it holds, so a parse error never quotes it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyJson {
    one_time_code: String,
    project: ProjectJson,
    #[serde(deserialize_with = "bounded_attributes")]
    attributes: BTreeMap<String, String>,
    expires_at: u64,
    usage_count: u32,
}

/// A JSON object of at most [`MAX_ATTRIBUTES`] string attributes, each name once. (Into a
/// plain map, a repeated name would silently replace the earlier value.)
fn bounded_attributes<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    struct Attributes;

    impl<'de> Visitor<'de> for Attributes {
        type Value = BTreeMap<String, String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "an object of at most {MAX_ATTRIBUTES} string attributes")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((name, value)) = map.next_entry::<String, String>()? {
                if out.len() >= MAX_ATTRIBUTES {
                    return Err(A::Error::custom(format_args!(
                        "more than {MAX_ATTRIBUTES} attributes"
                    )));
                }
                if out.contains_key(&name) {
                    return Err(A::Error::custom(format_args!(
                        "attribute {:?} appears twice",
                        shown(&name)
                    )));
                }
                out.insert(name, value);
            }
            Ok(out)
        }
    }

    d.deserialize_map(Attributes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ProjectError;
    use crate::project::tests::{any_project, project};
    use proptest::prelude::*;

    fn ticket() -> Ticket {
        Ticket {
            code: OneTimeCode::from_bytes(std::array::from_fn(|i| 0xa0 ^ i as u8)),
            project: project(),
            attributes: [("component", "db"), ("location", "sf")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            expires_at: 1_800_000_000,
            usage_count: 1,
        }
    }

    /// `version ‖ body ‖ checksum`, with a correct checksum.
    fn seal(version: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![version];
        bytes.extend_from_slice(body);
        let sum = checksum(&bytes);
        bytes.extend_from_slice(&sum);
        bytes
    }

    /// The body of `t` with the attributes written as given, in that order.
    fn body_with_attributes(t: &Ticket, attributes: &[(&str, &str)]) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new());
        e.array(5).unwrap().bytes(t.code.as_bytes()).unwrap();
        t.project.encode_cbor(&mut e);
        e.map(attributes.len() as u64).unwrap();
        for (k, v) in attributes {
            e.str(k).unwrap().str(v).unwrap();
        }
        e.u64(t.expires_at).unwrap().u32(t.usage_count).unwrap();
        e.into_writer()
    }

    /// Every way the code could be printed: hex, base64url, base64, and `{:?}` of the array.
    fn renderings_of_the_code(t: &Ticket) -> Vec<String> {
        let bytes = t.code.as_bytes();
        vec![
            hex::encode(bytes),
            hex::encode(bytes).to_uppercase(),
            URL_SAFE_NO_PAD.encode(bytes),
            base64::engine::general_purpose::STANDARD.encode(bytes),
            format!("{bytes:?}"),
            format!("{:?}", &bytes[..8]),
        ]
    }

    fn assert_no_code(t: &Ticket, text: &str) {
        for r in renderings_of_the_code(t) {
            assert!(!text.contains(&r), "the code ({r}) appears in {text}");
        }
    }

    #[test]
    fn round_trips_in_all_three_encodings() {
        let t = ticket();
        t.check().unwrap();
        for encoding in [Encoding::Text, Encoding::Hex, Encoding::Legacy] {
            let text = t.encode(encoding);
            assert_eq!(Ticket::decode(&text).unwrap(), t, "{encoding:?}");
        }
        assert_eq!(Ticket::from_bytes(&t.to_bytes()).unwrap(), t);
        assert_eq!(Encoding::default(), Encoding::Text);
    }

    #[test]
    fn each_encoding_starts_as_the_detection_rule_expects() {
        let t = ticket();
        assert!(t.encode(Encoding::Text).starts_with("AY"));
        assert!(t.encode(Encoding::Hex).starts_with("0185"));
        assert!(t.encode(Encoding::Legacy).starts_with("7b22"));
        let text = t.encode(Encoding::Text);
        assert!(!text.chars().all(|c| c.is_ascii_hexdigit()));
        let hex = t.encode(Encoding::Hex);
        assert_eq!(hex, hex.to_lowercase());
        // Hex of either case is read.
        assert_eq!(Ticket::decode(&hex.to_uppercase()).unwrap(), t);
        assert_eq!(
            Ticket::decode(&t.encode(Encoding::Legacy).to_uppercase()).unwrap(),
            t
        );
    }

    #[test]
    fn all_hex_text_is_read_as_hex_even_when_it_is_also_base64url() {
        // "abcd" is valid base64url for 3 bytes, and hex for 2: hex wins.
        assert!(URL_SAFE_NO_PAD.decode("abcd").is_ok());
        assert!(matches!(
            Ticket::decode("abcd"),
            Err(TicketError::Truncated { len: 2 })
        ));
        // One non-hex character makes it base64url.
        assert!(matches!(
            Ticket::decode("abcz"),
            Err(TicketError::Truncated { len: 3 })
        ));
        // An odd number of hex digits is a cut-short hex ticket, not base64url.
        let hex = ticket().encode(Encoding::Hex);
        assert!(matches!(
            Ticket::decode(&hex[..hex.len() - 1]),
            Err(TicketError::OddHexLength { .. })
        ));
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        let t = ticket();
        for encoding in [Encoding::Text, Encoding::Hex, Encoding::Legacy] {
            let text = t.encode(encoding);
            for input in [
                text.clone(),
                format!("{text}\n"),
                format!("{text}\r\n"),
                format!("{text}   "),
                format!("{text}\t\n\n"),
                format!("  \n{text}\n  "),
            ] {
                assert_eq!(Ticket::decode(&input).unwrap(), t, "{input:?}");
            }
        }
    }

    #[test]
    fn whitespace_inside_is_refused_with_its_position() {
        let text = ticket().encode(Encoding::Text);
        let wrapped = format!("{}\n{}", &text[..76], &text[76..]);
        let err = Ticket::decode(&wrapped).unwrap_err();
        assert!(
            matches!(
                err,
                TicketError::Whitespace {
                    character: '\n',
                    position: 77
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("join it into one line"));
        let spaced = format!("{} {}", &text[..10], &text[10..]);
        assert!(matches!(
            Ticket::decode(&spaced),
            Err(TicketError::Whitespace {
                character: ' ',
                position: 11
            })
        ));
    }

    #[test]
    fn characters_outside_both_alphabets_are_named_with_their_position() {
        let text = ticket().encode(Encoding::Text);
        for bad in ['+', '/', '=', '.', 'é'] {
            let input = format!("{}{bad}{}", &text[..5], &text[5..]);
            let err = Ticket::decode(&input).unwrap_err();
            assert!(
                matches!(
                    err,
                    TicketError::InvalidCharacter { character, position: 6 } if character == bad
                ),
                "{bad}: {err:?}"
            );
            assert!(err.to_string().contains(&format!("{bad:?} at character 6")));
        }
    }

    #[test]
    fn empty_and_oversized_input_are_refused() {
        for empty in ["", " ", "\n", " \t\r\n "] {
            assert!(matches!(Ticket::decode(empty), Err(TicketError::Empty)));
        }
        let big = "A".repeat(MAX_TICKET_LEN + 1);
        assert!(matches!(
            Ticket::decode(&big),
            Err(TicketError::TooLarge { .. })
        ));
        assert!(matches!(
            Ticket::from_bytes(&vec![1u8; MAX_TICKET_LEN + 1]),
            Err(TicketError::TooLarge { .. })
        ));
    }

    #[test]
    fn every_single_byte_flip_of_the_binary_form_is_refused_as_damage() {
        let t = ticket();
        let good = t.to_bytes();
        for at in 0..good.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[at] ^= mask;
                for input in [URL_SAFE_NO_PAD.encode(&bad), hex::encode(&bad)] {
                    let Err(err) = Ticket::decode(&input) else {
                        panic!("flipping byte {at} with {mask:#x} gave a valid ticket");
                    };
                    assert_no_code(&t, &format!("{err} {err:?}"));
                }
                let err = Ticket::from_bytes(&bad).unwrap_err();
                assert!(
                    matches!(err, TicketError::Checksum),
                    "byte {at} ^ {mask:#x}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_refused() {
        let t = ticket();
        let bytes = t.to_bytes();
        for cut in 0..bytes.len() {
            assert!(Ticket::from_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for encoding in [Encoding::Text, Encoding::Hex, Encoding::Legacy] {
            let text = t.encode(encoding);
            for cut in 0..text.len() {
                assert!(
                    Ticket::decode(&text[..cut]).is_err(),
                    "{encoding:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn an_unknown_version_is_named_and_a_damaged_version_byte_is_damage() {
        let t = ticket();
        let good = t.to_bytes();
        let body = &good[1..good.len() - CHECKSUM_LEN];
        let err = Ticket::decode(&URL_SAFE_NO_PAD.encode(seal(2, body))).unwrap_err();
        assert!(
            matches!(err, TicketError::UnknownVersion { version: 2 }),
            "{err:?}"
        );
        assert!(err.to_string().contains("version 2 is not supported"));
        let mut damaged = good.clone();
        damaged[0] = 2;
        assert!(matches!(
            Ticket::from_bytes(&damaged),
            Err(TicketError::Checksum)
        ));
        assert_eq!(
            TicketError::Checksum.to_string(),
            "ticket is damaged: checksum mismatch; copy the whole ticket again"
        );
    }

    #[test]
    fn non_canonical_bytes_with_a_valid_checksum_are_refused() {
        // usage_count 1 written in two bytes (0x18 0x01) instead of one.
        let t = ticket();
        let good = t.to_bytes();
        let body = &good[1..good.len() - CHECKSUM_LEN];
        assert_eq!(body.last(), Some(&0x01));
        let mut long = body[..body.len() - 1].to_vec();
        long.extend_from_slice(&[0x18, 0x01]);
        assert!(matches!(
            Ticket::from_bytes(&seal(1, &long)),
            Err(TicketError::NonCanonical)
        ));
        // Trailing bytes after the array.
        let mut trailing = body.to_vec();
        trailing.push(0);
        assert!(matches!(
            Ticket::from_bytes(&seal(1, &trailing)),
            Err(TicketError::TrailingBytes { count: 1 })
        ));
    }

    #[test]
    fn attributes_out_of_order_repeated_or_invalid_are_refused() {
        let t = ticket();
        let cases: [(&[(&str, &str)], &str); 4] = [
            (&[("b", "1"), ("a", "2")], "out of order"),
            (&[("a", "1"), ("a", "2")], "out of order or repeated"),
            (&[("a=b", "1")], "is invalid"),
            (&[("a", "bell\u{7}")], "is invalid"),
        ];
        for (attributes, expected) in cases {
            let bytes = seal(1, &body_with_attributes(&t, attributes));
            let err = Ticket::from_bytes(&bytes).unwrap_err();
            assert!(err.to_string().contains(expected), "{attributes:?}: {err}");
        }
        let many: Vec<(String, String)> = (0..=MAX_ATTRIBUTES)
            .map(|i| (format!("a{i:03}"), String::new()))
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let bytes = seal(1, &body_with_attributes(&t, &many));
        assert!(matches!(
            Ticket::from_bytes(&bytes),
            Err(TicketError::TooManyAttributes { count: 65, .. })
        ));
        let mut bad = t.clone();
        bad.attributes.insert("no spaces".to_owned(), String::new());
        assert!(matches!(bad.check(), Err(TicketError::Attribute { .. })));
    }

    #[test]
    fn an_invalid_project_inside_a_valid_checksum_is_named() {
        let mut t = ticket();
        t.project.name = "bad name".to_owned();
        let err = Ticket::decode(&t.encode(Encoding::Text)).unwrap_err();
        assert!(matches!(
            err,
            TicketError::Project(ProjectError::Name { .. })
        ));
        let err = Ticket::decode(&t.encode(Encoding::Legacy)).unwrap_err();
        assert!(matches!(
            err,
            TicketError::Project(ProjectError::Name { .. })
        ));
    }

    fn legacy_value(t: &Ticket) -> serde_json::Value {
        let hex = t.encode(Encoding::Legacy);
        serde_json::from_slice(&hex::decode(&hex).unwrap()).unwrap()
    }

    fn legacy_decode(v: &serde_json::Value) -> Result<Ticket, TicketError> {
        Ticket::decode(&hex::encode(v.to_string().as_bytes()))
    }

    #[test]
    fn legacy_json_is_strict() {
        let t = ticket();
        let mut v = legacy_value(&t);
        v["extra"] = serde_json::json!(true);
        assert!(matches!(legacy_decode(&v), Err(TicketError::Json(_))));

        let mut v = legacy_value(&t);
        v["project"]["project_node"]["extra"] = serde_json::json!(true);
        assert!(matches!(legacy_decode(&v), Err(TicketError::Json(_))));

        let mut v = legacy_value(&t);
        v["one_time_code"] = serde_json::json!("abcd");
        let err = legacy_decode(&v).unwrap_err();
        assert!(matches!(err, TicketError::Code), "{err:?}");

        let mut v = legacy_value(&t);
        v["attributes"]["a=b"] = serde_json::json!("x");
        assert!(matches!(
            legacy_decode(&v),
            Err(TicketError::Attribute { .. })
        ));

        // A repeated attribute name is refused rather than silently collapsed.
        let json = legacy_value(&t).to_string().replace(
            "\"component\":\"db\"",
            "\"component\":\"db\",\"component\":\"web\"",
        );
        let err = Ticket::decode(&hex::encode(json.as_bytes())).unwrap_err();
        let TicketError::Json(source) = &err else {
            panic!("{err:?}");
        };
        assert!(source.to_string().contains("appears twice"), "{source}");

        let mut v = legacy_value(&t);
        let many: serde_json::Map<String, serde_json::Value> = (0..=MAX_ATTRIBUTES)
            .map(|i| (format!("a{i}"), serde_json::json!("")))
            .collect();
        v["attributes"] = serde_json::Value::Object(many);
        let err = legacy_decode(&v).unwrap_err();
        let TicketError::Json(source) = &err else {
            panic!("{err:?}");
        };
        assert!(source.to_string().contains("more than 64"), "{source}");
    }

    #[test]
    fn the_code_never_appears_in_debug_output_or_errors() {
        let t = ticket();
        let shown = format!("{t:?} {:?} {t:#?}", t.code);
        assert_no_code(&t, &shown);
        assert!(shown.contains("OneTimeCode(…)"));
        assert!(shown.contains(&t.id()));

        let mut v = legacy_value(&t);
        v["expires_at"] = serde_json::json!("soon");
        let err = legacy_decode(&v).unwrap_err();
        assert_no_code(
            &t,
            &format!("{err} {err:?} {:?}", std::error::Error::source(&err)),
        );
    }

    #[test]
    fn code_hash_and_id_known_answers() {
        let code = OneTimeCode::from_bytes([0u8; CODE_LEN]);
        let mut expected = Sha256::new();
        expected.update(b"kith/ticket-code/1\0");
        expected.update([0u8; 32]);
        assert_eq!(code.hash(), <[u8; 32]>::from(expected.finalize()));
        assert_eq!(
            hex::encode(&code.hash()),
            "c9cb3964ad30e050880367f6983a1ccb33022b41b8e842da6a4ee072a623b62e"
        );
        let t = ticket();
        assert_eq!(t.id(), hex::encode(&t.code.hash())[..12]);
        assert_eq!(hex::encode(&checksum(b"")), "d68b3369");
        // The whole binary form of the fixed ticket, pinned through its checksum.
        let bytes = t.to_bytes();
        assert_eq!(
            hex::encode(&bytes[bytes.len() - CHECKSUM_LEN..]),
            "1baa8856"
        );
    }

    #[test]
    fn random_codes_differ_and_compare_by_value() {
        let a = OneTimeCode::random();
        let b = OneTimeCode::random();
        assert_ne!(a.as_bytes(), b.as_bytes());
        assert_ne!(a, b);
        assert_eq!(a, OneTimeCode::from_bytes(*a.as_bytes()));
    }

    fn any_ticket() -> impl Strategy<Value = Ticket> {
        (
            any::<[u8; CODE_LEN]>(),
            any_project(),
            proptest::collection::btree_map("[!-<>-~]{1,20}", "\\PC{0,30}", 0..8),
            any::<u64>(),
            any::<u32>(),
        )
            .prop_map(
                |(code, project, attributes, expires_at, usage_count)| Ticket {
                    code: OneTimeCode::from_bytes(code),
                    project,
                    attributes,
                    expires_at,
                    usage_count,
                },
            )
    }

    proptest! {
        #[test]
        fn any_valid_ticket_round_trips(t in any_ticket()) {
            t.check().unwrap();
            for encoding in [Encoding::Text, Encoding::Hex, Encoding::Legacy] {
                prop_assert_eq!(Ticket::decode(&t.encode(encoding)).unwrap(), t.clone());
            }
            prop_assert_eq!(Ticket::from_bytes(&t.to_bytes()).unwrap(), t.clone());
            assert_no_code(&t, &format!("{t:?}"));
        }

        #[test]
        fn surrounding_ascii_whitespace_never_matters(
            before in "[ \t\r\n]{0,4}",
            after in "[ \t\r\n]{0,4}",
        ) {
            let t = ticket();
            let text = format!("{before}{}{after}", t.encode(Encoding::Text));
            prop_assert_eq!(Ticket::decode(&text).unwrap(), t);
        }

        #[test]
        fn random_text_never_panics(
            s in prop_oneof![
                ".{0,200}",
                "[A-Za-z0-9_-]{0,400}",
                "[0-9a-f]{0,400}",
                "7b[0-9a-f]{0,400}",
            ]
        ) {
            let _ = Ticket::decode(&s);
        }

        #[test]
        fn random_bodies_with_a_valid_checksum_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..400)
        ) {
            let bytes = seal(VERSION, &body);
            if let Ok(t) = Ticket::from_bytes(&bytes) {
                prop_assert_eq!(t.to_bytes(), bytes);
            }
        }

        #[test]
        fn random_byte_flips_in_text_are_refused(at in 0usize..1000, to in "[A-Za-z0-9_-]") {
            let text = ticket().encode(Encoding::Text);
            let at = at % text.len();
            let mut bad = text.clone();
            bad.replace_range(at..at + 1, &to);
            prop_assume!(bad != text);
            prop_assert!(Ticket::decode(&bad).is_err());
        }
    }
}
