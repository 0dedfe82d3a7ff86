//! Hex, the one codec every kith text form of bytes uses (identity histories, credentials,
//! ticket codes, hashes): lowercase out, either case in, errors that say where.

/// Why text is not hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    /// A character that is not a hex digit, with its 1-based position.
    #[error("{character:?} at position {position} is not a hex digit")]
    NotHex {
        /// The character.
        character: char,
        /// Its 1-based position.
        position: usize,
    },
    /// An odd number of digits.
    #[error("it has an odd number of digits ({len})")]
    OddLength {
        /// How many digits there are.
        len: usize,
    },
    /// Not the length a fixed-size value needs.
    #[error("it has {len} digits, not {expected}")]
    WrongLength {
        /// How many digits there are.
        len: usize,
        /// How many there must be.
        expected: usize,
    },
}

/// Lowercase hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len().saturating_mul(2));
    for b in bytes {
        for nibble in [b >> 4, b & 0x0f] {
            s.push(char::from(
                DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0'),
            ));
        }
    }
    s
}

/// Hex digits of either case into bytes. Callers bound the length first where the text is
/// untrusted.
pub fn decode(s: &str) -> Result<Vec<u8>, HexError> {
    let digits = s
        .chars()
        .enumerate()
        .map(|(i, c)| {
            c.to_digit(16)
                .and_then(|d| u8::try_from(d).ok())
                .ok_or(HexError::NotHex {
                    character: c,
                    position: i.saturating_add(1),
                })
        })
        .collect::<Result<Vec<u8>, _>>()?;
    if !digits.len().is_multiple_of(2) {
        return Err(HexError::OddLength { len: digits.len() });
    }
    Ok(digits
        .chunks_exact(2)
        .map(|pair| match pair {
            [hi, lo] => hi << 4 | lo,
            _ => 0,
        })
        .collect())
}

/// Hex of exactly `N` bytes.
pub fn decode_array<const N: usize>(s: &str) -> Result<[u8; N], HexError> {
    let bytes = decode(s)?;
    let len = s.chars().count();
    bytes.try_into().map_err(|_| HexError::WrongLength {
        len,
        expected: N.saturating_mul(2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn errors_say_where() {
        assert_eq!(encode(&[0x00, 0xab, 0xff]), "00abff");
        assert_eq!(decode("00ABff").unwrap(), vec![0x00, 0xab, 0xff]);
        assert_eq!(
            decode("0g"),
            Err(HexError::NotHex {
                character: 'g',
                position: 2
            })
        );
        assert_eq!(decode("abc"), Err(HexError::OddLength { len: 3 }));
        assert_eq!(
            decode_array::<2>("abcdef"),
            Err(HexError::WrongLength {
                len: 6,
                expected: 4
            })
        );
        assert_eq!(decode_array::<2>("abcd"), Ok([0xab, 0xcd]));
    }

    proptest! {
        #[test]
        fn round_trips_and_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), text in ".{0,64}") {
            prop_assert_eq!(decode(&encode(&bytes)).unwrap(), bytes);
            let _ = decode(&text);
            let _ = decode_array::<4>(&text);
        }
    }
}
