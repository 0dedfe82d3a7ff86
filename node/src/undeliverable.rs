//! The error message a node sends back along a return route when it cannot deliver a message
//! (DESIGN §2, "Router"): which node gave up, at which hop, and a coarse class. Never the
//! payload, never our detailed reason: those stay in our own log.
//!
//! Encoded by hand (this crate has no CBOR dependency) as
//!
//! ```text
//! version u8 (= 1) · class u8 · node name: len u8, UTF-8 · address: kind u8, len u16 BE, UTF-8
//! ```
//!
//! Decoding is strict: the version is known, every length is compared with its named maximum
//! before anything is read or allocated, the texts are valid UTF-8 without control characters,
//! and nothing may follow. A class number this node does not know decodes as
//! [`ErrorClass::Other`], so an error from a newer peer still reaches the user.

use std::fmt;

use crate::{Address, MAX_ADDRESS_LEN, UndeliverableDecodeError};

/// The undeliverable payload version this node writes and reads.
pub const UNDELIVERABLE_VERSION: u8 = 1;

/// 255 bytes: the longest node name an error message carries. Node names are short labels
/// (`db-node`); the cap bounds what one error can make us allocate and print.
pub const MAX_NODE_NAME_LEN: usize = 255;

/// Why a message was not delivered, coarsely: what a peer may learn. Each class has a wire
/// number that never changes meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// No worker or relay at the address (1).
    UnknownAddress,
    /// The address's incoming policy refused the sender (2).
    Denied,
    /// The next hop could not be reached (3).
    Unreachable,
    /// The message is larger than the next hop takes (4).
    TooLarge,
    /// The worker at the address has stopped (5).
    Closed,
    /// Too busy to start a secure channel now (6).
    Busy,
    /// A secure channel handshake was invalid (7).
    InvalidHandshake,
    /// The initiator presented no credential from an authority the responder trusts (8).
    NoTrustedCredential,
    /// The initiator is not on the responder's allow list (9).
    NotAllowed,
    /// The initiator's credential has been revoked (10).
    Revoked,
    /// The responder cannot tell whether the initiator's credential still holds: it has not
    /// heard its authority's revocations for longer than its grace (11).
    RevocationsUnknown,
    /// A class this node does not know, from a newer peer; keeps the number it came with.
    Other(u8),
}

impl ErrorClass {
    /// The class's number on the wire.
    pub fn to_wire(self) -> u8 {
        match self {
            Self::UnknownAddress => 1,
            Self::Denied => 2,
            Self::Unreachable => 3,
            Self::TooLarge => 4,
            Self::Closed => 5,
            Self::Busy => 6,
            Self::InvalidHandshake => 7,
            Self::NoTrustedCredential => 8,
            Self::NotAllowed => 9,
            Self::Revoked => 10,
            Self::RevocationsUnknown => 11,
            Self::Other(n) => n,
        }
    }

    /// The class a wire number stands for; [`ErrorClass::Other`] for numbers this node does
    /// not know (0 included).
    pub fn from_wire(n: u8) -> Self {
        match n {
            1 => Self::UnknownAddress,
            2 => Self::Denied,
            3 => Self::Unreachable,
            4 => Self::TooLarge,
            5 => Self::Closed,
            6 => Self::Busy,
            7 => Self::InvalidHandshake,
            8 => Self::NoTrustedCredential,
            9 => Self::NotAllowed,
            10 => Self::Revoked,
            11 => Self::RevocationsUnknown,
            n => Self::Other(n),
        }
    }

    /// A short, stable name for counting and scripts: `denied`, `no-trusted-credential`.
    pub fn name(self) -> &'static str {
        match self {
            Self::UnknownAddress => "unknown-address",
            Self::Denied => "denied",
            Self::Unreachable => "unreachable",
            Self::TooLarge => "too-large",
            Self::Closed => "closed",
            Self::Busy => "busy",
            Self::InvalidHandshake => "invalid-handshake",
            Self::NoTrustedCredential => "no-trusted-credential",
            Self::NotAllowed => "not-allowed",
            Self::Revoked => "revoked",
            Self::RevocationsUnknown => "revocations-unknown",
            Self::Other(_) => "other",
        }
    }

    /// The class alone, in a few words: `denied by the access policy`.
    pub fn describe(self) -> &'static str {
        match self {
            Self::UnknownAddress => "no such address",
            Self::Denied => "denied by the access policy",
            Self::Unreachable => "the next hop is unreachable",
            Self::TooLarge => "the message is too large",
            Self::Closed => "the worker has stopped",
            Self::Busy => "too busy to start a secure channel",
            Self::InvalidHandshake => "invalid handshake",
            Self::NoTrustedCredential => "no credential from an authority it trusts",
            Self::NotAllowed => "not on its allow list",
            Self::Revoked => "credential revoked",
            Self::RevocationsUnknown => {
                "its authority's revocations are out of date, so it cannot check credentials"
            }
            Self::Other(_) => "an error this node does not know",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Other(n) => write!(f, "{} (class {n})", self.describe()),
            known => f.write_str(known.describe()),
        }
    }
}

/// The payload of an error message: `node` could not deliver a message at `address`, for a
/// reason of `class`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undeliverable {
    /// The name of the node that gave up.
    pub node: String,
    /// The hop that failed: the address it had no worker for, the worker that refused or
    /// stopped, the peer it could not reach.
    pub address: Address,
    /// Why, coarsely.
    pub class: ErrorClass,
}

impl Undeliverable {
    /// The payload bytes. A node name longer than [`MAX_NODE_NAME_LEN`] is cut at a character
    /// boundary and its control characters are replaced, so what is written always decodes.
    pub fn encode(&self) -> Vec<u8> {
        let name = printable_name(&self.node);
        let value = self.address.value().as_bytes();
        let mut out = Vec::with_capacity(6 + name.len() + value.len());
        out.push(UNDELIVERABLE_VERSION);
        out.push(self.class.to_wire());
        // Both lengths fit their fields: the name was cut to MAX_NODE_NAME_LEN (255) above, an
        // address value is at most MAX_ADDRESS_LEN (255) bytes.
        out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(name.as_bytes());
        out.push(self.address.kind());
        out.extend_from_slice(&u16::try_from(value.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(value);
        out
    }

    /// Read a payload written by [`Undeliverable::encode`] (by this or a newer node).
    pub fn decode(bytes: &[u8]) -> Result<Self, UndeliverableDecodeError> {
        let mut r = Reader(bytes);
        let version = r.u8("version")?;
        if version != UNDELIVERABLE_VERSION {
            return Err(UndeliverableDecodeError::Version(version));
        }
        let class = ErrorClass::from_wire(r.u8("class")?);
        let name_len = usize::from(r.u8("node name length")?);
        if name_len > MAX_NODE_NAME_LEN {
            return Err(UndeliverableDecodeError::NodeNameTooLong {
                len: name_len,
                max: MAX_NODE_NAME_LEN,
            });
        }
        let name = r.text(name_len, "node name")?;
        if name.chars().any(char::is_control) {
            return Err(UndeliverableDecodeError::NotText { field: "node name" });
        }
        let kind = r.u8("address kind")?;
        let [hi, lo] = r.take(2, "address length")? else {
            return Err(UndeliverableDecodeError::Truncated {
                field: "address length",
            });
        };
        let value_len = usize::from(u16::from_be_bytes([*hi, *lo]));
        if value_len > MAX_ADDRESS_LEN {
            return Err(UndeliverableDecodeError::AddressTooLong {
                len: value_len,
                max: MAX_ADDRESS_LEN,
            });
        }
        let value = r.text(value_len, "address")?;
        let address = Address::try_new(kind, value).map_err(UndeliverableDecodeError::Address)?;
        if !r.0.is_empty() {
            return Err(UndeliverableDecodeError::TrailingBytes(r.0.len()));
        }
        Ok(Self {
            node: name.to_owned(),
            address,
            class,
        })
    }
}

/// `node`, cut to [`MAX_NODE_NAME_LEN`] bytes at a character boundary, with control
/// characters replaced: what [`Undeliverable::encode`] writes.
fn printable_name(node: &str) -> std::borrow::Cow<'_, str> {
    let mut end = node.len().min(MAX_NODE_NAME_LEN);
    while !node.is_char_boundary(end) {
        end -= 1;
    }
    let cut = node.get(..end).unwrap_or_default();
    if cut.chars().any(char::is_control) {
        let replaced: String = cut
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        std::borrow::Cow::Owned(replaced)
    } else {
        std::borrow::Cow::Borrowed(cut)
    }
}

/// A cursor over the payload that never reads past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(
        &mut self,
        n: usize,
        field: &'static str,
    ) -> Result<&'a [u8], UndeliverableDecodeError> {
        if self.0.len() < n {
            return Err(UndeliverableDecodeError::Truncated { field });
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, UndeliverableDecodeError> {
        match self.take(1, field)? {
            [b] => Ok(*b),
            _ => Err(UndeliverableDecodeError::Truncated { field }),
        }
    }

    fn text(&mut self, n: usize, field: &'static str) -> Result<&'a str, UndeliverableDecodeError> {
        std::str::from_utf8(self.take(n, field)?)
            .map_err(|_| UndeliverableDecodeError::NotText { field })
    }
}

/// A local address by its name (`echo`), any other in full (`1#10.0.0.1:4000`).
struct Hop<'a>(&'a Address);

impl fmt::Display for Hop<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_local() {
            f.write_str(self.0.value())
        } else {
            fmt::Display::fmt(self.0, f)
        }
    }
}

/// The prefix of a relay's address: relay `db` forwards at `forward_to_db`.
const RELAY_PREFIX: &str = "forward_to_";

impl fmt::Display for Undeliverable {
    /// One line for the user, naming the node and the hop: `db-node has no service nosuch`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let node = &self.node;
        let hop = Hop(&self.address);
        match self.class {
            ErrorClass::UnknownAddress => match self.address.value().strip_prefix(RELAY_PREFIX) {
                Some(relay) if self.address.is_local() && !relay.is_empty() => {
                    write!(f, "{node} has no relay named {relay}")
                }
                _ => write!(f, "{node} has no service {hop}"),
            },
            ErrorClass::Denied => {
                write!(
                    f,
                    "{node} refused: denied by the access policy of service {hop}"
                )
            }
            ErrorClass::Unreachable => {
                write!(f, "{node} cannot reach the next hop {}", self.address)
            }
            ErrorClass::TooLarge => write!(f, "{node} refused: the message is too large"),
            ErrorClass::Closed => write!(f, "{node}: {hop} has stopped"),
            ErrorClass::Busy => write!(f, "{node} is too busy to start a secure channel"),
            class @ (ErrorClass::InvalidHandshake
            | ErrorClass::NoTrustedCredential
            | ErrorClass::NotAllowed
            | ErrorClass::Revoked
            | ErrorClass::RevocationsUnknown) => {
                write!(f, "{node} refused the secure channel: {}", class.describe())
            }
            ErrorClass::Other(n) => write!(
                f,
                "{node} could not deliver the message at {hop} (error class {n}, unknown to this node)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AddressError, TCP};
    use proptest::prelude::*;

    fn error(node: &str, address: Address, class: ErrorClass) -> String {
        Undeliverable {
            node: node.into(),
            address,
            class,
        }
        .to_string()
    }

    #[test]
    fn each_class_reads_as_a_sentence_naming_the_node_and_the_hop() {
        let local = Address::local;
        let cases = [
            (
                error("db-node", local("echo"), ErrorClass::Denied),
                "db-node refused: denied by the access policy of service echo",
            ),
            (
                error(
                    "project-node",
                    local("forward_to_nosuch"),
                    ErrorClass::UnknownAddress,
                ),
                "project-node has no relay named nosuch",
            ),
            (
                error("db-node", local("nosuch"), ErrorClass::UnknownAddress),
                "db-node has no service nosuch",
            ),
            (
                error(
                    "db-node",
                    Address::try_new(TCP, "10.0.0.1:4000").unwrap(),
                    ErrorClass::Unreachable,
                ),
                "db-node cannot reach the next hop 1#10.0.0.1:4000",
            ),
            (
                error("db-node", local("echo"), ErrorClass::TooLarge),
                "db-node refused: the message is too large",
            ),
            (
                error("db-node", local("echo"), ErrorClass::Closed),
                "db-node: echo has stopped",
            ),
            (
                error("db-node", local("api"), ErrorClass::Busy),
                "db-node is too busy to start a secure channel",
            ),
            (
                error("db-node", local("api"), ErrorClass::InvalidHandshake),
                "db-node refused the secure channel: invalid handshake",
            ),
            (
                error("db-node", local("api"), ErrorClass::NoTrustedCredential),
                "db-node refused the secure channel: no credential from an authority it trusts",
            ),
            (
                error("db-node", local("api"), ErrorClass::NotAllowed),
                "db-node refused the secure channel: not on its allow list",
            ),
            (
                error("db-node", local("api"), ErrorClass::Revoked),
                "db-node refused the secure channel: credential revoked",
            ),
        ];
        for (shown, expected) in cases {
            assert_eq!(shown, expected);
        }
        assert_eq!(ErrorClass::Denied.describe(), "denied by the access policy");
        assert_eq!(
            ErrorClass::Other(42).to_string(),
            "an error this node does not know (class 42)"
        );
    }

    #[test]
    fn wire_numbers_are_stable_and_unknown_ones_are_kept() {
        let known = [
            ErrorClass::UnknownAddress,
            ErrorClass::Denied,
            ErrorClass::Unreachable,
            ErrorClass::TooLarge,
            ErrorClass::Closed,
            ErrorClass::Busy,
            ErrorClass::InvalidHandshake,
            ErrorClass::NoTrustedCredential,
            ErrorClass::NotAllowed,
            ErrorClass::Revoked,
            ErrorClass::RevocationsUnknown,
        ];
        for (class, n) in known.into_iter().zip(1u8..) {
            assert_eq!(class.to_wire(), n, "{class:?}");
            assert_eq!(ErrorClass::from_wire(n), class);
        }
        assert_eq!(ErrorClass::from_wire(12), ErrorClass::Other(12));
        assert_eq!(ErrorClass::from_wire(0), ErrorClass::Other(0));
    }

    #[test]
    fn the_encoding_is_the_documented_layout() {
        let bytes = Undeliverable {
            node: "db".into(),
            address: Address::local("echo"),
            class: ErrorClass::Denied,
        }
        .encode();
        assert_eq!(bytes, b"\x01\x02\x02db\x00\x00\x04echo");
    }

    #[test]
    fn bad_payloads_are_refused_with_the_reason() {
        use UndeliverableDecodeError as E;
        let good = Undeliverable {
            node: "db".into(),
            address: Address::local("echo"),
            class: ErrorClass::Denied,
        }
        .encode();
        assert_eq!(
            Undeliverable::decode(&[2, 1, 0, 0, 0, 1, b'x']),
            Err(E::Version(2))
        );
        for cut in 0..good.len() {
            assert!(
                matches!(
                    Undeliverable::decode(&good[..cut]),
                    Err(E::Truncated { .. })
                ),
                "cut at {cut}"
            );
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(Undeliverable::decode(&long), Err(E::TrailingBytes(1)));
        // An address length past the cap is refused before the bytes are looked for.
        assert_eq!(
            Undeliverable::decode(&[1, 1, 0, 0, 0x01, 0x00]),
            Err(E::AddressTooLong {
                len: 256,
                max: MAX_ADDRESS_LEN
            })
        );
        assert_eq!(
            Undeliverable::decode(&[1, 1, 1, 0x1b, 0, 0, 1, b'x']),
            Err(E::NotText { field: "node name" })
        );
        assert_eq!(
            Undeliverable::decode(&[1, 1, 1, 0xff, 0, 0, 1, b'x']),
            Err(E::NotText { field: "node name" })
        );
        assert!(matches!(
            Undeliverable::decode(&[1, 1, 0, 0, 0, 0]),
            Err(E::Address(AddressError::Empty))
        ));
    }

    #[test]
    fn a_long_or_unprintable_node_name_is_written_so_that_it_decodes() {
        let u = Undeliverable {
            node: format!("é{}\x1b[2J", "n".repeat(300)),
            address: Address::local("echo"),
            class: ErrorClass::Closed,
        };
        let back = Undeliverable::decode(&u.encode()).unwrap();
        assert!(back.node.len() <= MAX_NODE_NAME_LEN);
        assert!(back.node.starts_with("énnn"));
        let u = Undeliverable {
            node: "db\x1b[2J".into(),
            ..u
        };
        assert_eq!(Undeliverable::decode(&u.encode()).unwrap().node, "db?[2J");
    }

    fn arb_undeliverable() -> impl Strategy<Value = Undeliverable> {
        (
            "[a-z0-9 é.-]{0,80}",
            any::<u8>(),
            "[a-z0-9.:#_-]{1,255}",
            any::<u8>(),
        )
            .prop_map(|(node, kind, value, class)| Undeliverable {
                node,
                address: Address::try_new(kind, value).unwrap(),
                class: ErrorClass::from_wire(class),
            })
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(u in arb_undeliverable()) {
            prop_assert_eq!(Undeliverable::decode(&u.encode()), Ok(u));
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_what_decodes_re_encodes_to_the_same_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            if let Ok(u) = Undeliverable::decode(&bytes) {
                prop_assert_eq!(u.encode(), bytes);
                let _ = u.to_string();
            }
        }
    }
}
