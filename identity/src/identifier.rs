//! Identifiers: `I` followed by 40 hex digits, the first 20 bytes of SHA-256 over an
//! identity's first key change.

use std::fmt;
use std::str::FromStr;

use crate::codec::{from_hex, to_hex};

/// Bytes in an identifier.
pub const IDENTIFIER_LEN: usize = 20;

/// Names an identity for good: it is fixed by the identity's first key change.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identifier([u8; IDENTIFIER_LEN]);

/// Why text is not an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid identifier {0:?}: write I followed by 40 hex digits, e.g. I6c20e814b56579306f55c64e8747e6c1b4a53d9a"
)]
pub struct IdentifierError(pub String);

impl Identifier {
    /// From raw bytes.
    pub fn from_bytes(bytes: [u8; IDENTIFIER_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; IDENTIFIER_LEN] {
        &self.0
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "I{}", to_hex(&self.0))
    }
}

impl fmt::Debug for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Identifier {
    type Err = IdentifierError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix('I')
            .and_then(from_hex::<IDENTIFIER_LEN>)
            .map(Self)
            .ok_or_else(|| IdentifierError(s.chars().take(64).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_form() {
        let s = "I6c20e814b56579306f55c64e8747e6c1b4a53d9a";
        assert_eq!(s.parse::<Identifier>().unwrap().to_string(), s);
        for bad in [
            "",
            "I",
            "6c20e814b56579306f55c64e8747e6c1b4a53d9a",
            "I6c20",
            "Ixx20e814b56579306f55c64e8747e6c1b4a53d9a",
            "I6c20e814b56579306f55c64e8747e6c1b4a53d9a00",
        ] {
            assert!(bad.parse::<Identifier>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn display_parses_back(bytes in any::<[u8; 20]>()) {
            let id = Identifier::from_bytes(bytes);
            prop_assert_eq!(id.to_string().parse::<Identifier>().unwrap(), id);
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,60}") {
            let _ = s.parse::<Identifier>();
        }
    }
}
