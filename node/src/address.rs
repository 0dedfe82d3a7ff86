//! Addresses and routes: where a message goes and how to answer it.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

/// Address kind of a worker on this node.
pub const LOCAL: u8 = 0;
/// Address kind of a TCP peer, `host:port`.
pub const TCP: u8 = 1;

/// 255 bytes: a DNS name plus a port fits; anything longer is not an address we would dial or
/// register, and the cap bounds what one wire address can make us allocate.
pub const MAX_ADDRESS_LEN: usize = 255;

/// 32 hops: a route through a few relays and secure channels needs fewer than ten; the cap
/// bounds the work a peer can make us do for one message and stops return routes from
/// growing without limit in a routing loop.
pub const MAX_ROUTE_LEN: usize = 32;

/// A transport kind and a value that the transport understands, shown as `kind#value`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    kind: u8,
    value: String,
}

/// Why a text or wire value is not a valid [`Address`] or [`Route`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The address value was empty.
    #[error("an address needs a value after its kind, as in 0#echo")]
    Empty,
    /// The address value was longer than [`MAX_ADDRESS_LEN`].
    #[error("address is {len} bytes long; the most is {max}")]
    TooLong {
        /// Length of the rejected value in bytes.
        len: usize,
        /// [`MAX_ADDRESS_LEN`].
        max: usize,
    },
    /// The address value contained a control character or `#`-less junk.
    #[error("address {value:?} contains a control character")]
    ControlCharacter {
        /// The rejected value, as given.
        value: String,
    },
    /// The kind before `#` was not a number from 0 to 255.
    #[error("address kind {kind:?} is not a number from 0 to 255")]
    BadKind {
        /// The rejected kind text.
        kind: String,
    },
    /// A route had more than [`MAX_ROUTE_LEN`] hops.
    #[error("route has {len} hops; the most is {max}")]
    RouteTooLong {
        /// Number of hops.
        len: usize,
        /// [`MAX_ROUTE_LEN`].
        max: usize,
    },
}

impl Address {
    /// An address of `kind` with `value`, checked against the rules every address obeys.
    pub fn try_new(kind: u8, value: impl AsRef<str>) -> Result<Self, AddressError> {
        // Check on the borrowed text, so a hostile value is refused before it is copied.
        let value = value.as_ref();
        if value.is_empty() {
            return Err(AddressError::Empty);
        }
        if value.len() > MAX_ADDRESS_LEN {
            return Err(AddressError::TooLong {
                len: value.len(),
                max: MAX_ADDRESS_LEN,
            });
        }
        if value.chars().any(char::is_control) {
            return Err(AddressError::ControlCharacter {
                value: value.to_owned(),
            });
        }
        Ok(Self {
            kind,
            value: value.to_owned(),
        })
    }

    /// A local worker address. For names chosen in code: an invalid name is replaced by
    /// `invalid`, which no worker registers, so a mistake is a dropped message, not a panic.
    pub fn local(value: impl AsRef<str>) -> Self {
        Self::try_new(LOCAL, value).unwrap_or_else(|_| Self {
            kind: LOCAL,
            value: "invalid".to_owned(),
        })
    }

    /// A fresh local address `prefix-<16 hex digits>`, unguessable by peers.
    pub fn random_local(prefix: &str) -> Self {
        let n: u64 = rand::random();
        Self {
            kind: LOCAL,
            value: format!("{prefix}-{n:016x}"),
        }
    }

    /// The transport kind: [`LOCAL`], [`TCP`], ….
    pub fn kind(&self) -> u8 {
        self.kind
    }

    /// The transport-specific value: a worker name, a `host:port`, ….
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Whether this address names a worker on this node.
    pub fn is_local(&self) -> bool {
        self.kind == LOCAL
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.kind, self.value)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Address {
    type Err = AddressError;

    /// `kind#value`, or a bare `value` for a local address.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('#') {
            Some((kind, value)) => {
                let kind = kind.parse::<u8>().map_err(|_| AddressError::BadKind {
                    kind: kind.to_owned(),
                })?;
                Self::try_new(kind, value)
            }
            None => Self::try_new(LOCAL, s),
        }
    }
}

impl From<&str> for Address {
    fn from(s: &str) -> Self {
        Self::local(s)
    }
}

/// An ordered list of addresses; the first is the next hop.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Route(VecDeque<Address>);

impl Route {
    /// The empty route.
    pub fn new() -> Self {
        Self(VecDeque::new())
    }

    /// The next hop, if any.
    pub fn next(&self) -> Option<&Address> {
        self.0.front()
    }

    /// Remove and return the next hop.
    pub fn step(&mut self) -> Option<Address> {
        self.0.pop_front()
    }

    /// Put `address` in front: how a forwarding hop adds itself to a return route.
    pub fn prepend(&mut self, address: Address) {
        self.0.push_front(address);
    }

    /// Add `address` as the last hop.
    pub fn append(&mut self, address: Address) {
        self.0.push_back(address);
    }

    /// Replace the next hop; returns the old one. Used when a transport address resolves to
    /// the local worker that carries messages to it.
    pub fn replace_next(&mut self, address: Address) -> Option<Address> {
        let old = self.0.pop_front();
        self.0.push_front(address);
        old
    }

    /// Number of hops.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no hop left.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The hops in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Address> {
        self.0.iter()
    }

    /// A route from hops, refusing more than [`MAX_ROUTE_LEN`].
    pub fn try_from_iter(hops: impl IntoIterator<Item = Address>) -> Result<Self, AddressError> {
        let hops: VecDeque<Address> = hops.into_iter().take(MAX_ROUTE_LEN + 1).collect();
        if hops.len() > MAX_ROUTE_LEN {
            return Err(AddressError::RouteTooLong {
                len: hops.len(),
                max: MAX_ROUTE_LEN,
            });
        }
        Ok(Self(hops))
    }
}

impl FromIterator<Address> for Route {
    fn from_iter<T: IntoIterator<Item = Address>>(iter: T) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl From<Address> for Route {
    fn from(a: Address) -> Self {
        Self(VecDeque::from([a]))
    }
}

impl From<&str> for Route {
    fn from(s: &str) -> Self {
        Self::from(Address::local(s))
    }
}

impl From<Vec<Address>> for Route {
    fn from(v: Vec<Address>) -> Self {
        Self(v.into())
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{a}")?;
        }
        f.write_str("]")
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn address_display_and_parse_agree() {
        let a: Address = "1#127.0.0.1:4000".parse().unwrap();
        assert_eq!(a.kind(), TCP);
        assert_eq!(a.value(), "127.0.0.1:4000");
        assert_eq!(a.to_string(), "1#127.0.0.1:4000");
        assert_eq!("echo".parse::<Address>().unwrap(), Address::local("echo"));
    }

    #[test]
    fn bad_addresses_are_refused_with_reasons() {
        assert_eq!("0#".parse::<Address>(), Err(AddressError::Empty));
        assert!(matches!(
            "x#a".parse::<Address>(),
            Err(AddressError::BadKind { .. })
        ));
        assert!(matches!(
            "300#a".parse::<Address>(),
            Err(AddressError::BadKind { .. })
        ));
        let long = "a".repeat(MAX_ADDRESS_LEN + 1);
        assert!(matches!(
            long.parse::<Address>(),
            Err(AddressError::TooLong { .. })
        ));
        assert!(matches!(
            "a\nb".parse::<Address>(),
            Err(AddressError::ControlCharacter { .. })
        ));
    }

    #[test]
    fn routes_over_the_cap_are_refused() {
        let hops = (0..=MAX_ROUTE_LEN).map(|i| Address::local(format!("w{i}")));
        assert!(Route::try_from_iter(hops).is_err());
        let hops = (0..MAX_ROUTE_LEN).map(|i| Address::local(format!("w{i}")));
        assert_eq!(Route::try_from_iter(hops).unwrap().len(), MAX_ROUTE_LEN);
    }

    proptest! {
        #[test]
        fn any_text_parses_or_errors_and_valid_ones_round_trip(s in ".{0,300}") {
            if let Ok(a) = s.parse::<Address>() {
                prop_assert_eq!(a.to_string().parse::<Address>().unwrap(), a);
            }
        }
    }
}
