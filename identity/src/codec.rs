//! Strict CBOR helpers shared by the identity encodings: definite lengths only, exact sizes
//! for keys and signatures, every count checked against a named maximum before it is used.

use minicbor::Decoder;
use minicbor::data::Type;

use crate::DecodeError;

/// An array header announcing exactly `n` items.
pub(crate) fn array_of(d: &mut Decoder<'_>, n: u64, what: &'static str) -> Result<(), DecodeError> {
    match d.array()? {
        Some(len) if len == n => Ok(()),
        _ => Err(DecodeError::Shape(what)),
    }
}

/// A definite array header of at most `max` items; returns the count.
pub(crate) fn array_up_to(
    d: &mut Decoder<'_>,
    max: usize,
    what: &'static str,
) -> Result<usize, DecodeError> {
    let Some(len) = d.array()? else {
        return Err(DecodeError::Shape(what));
    };
    match usize::try_from(len) {
        Ok(n) if n <= max => Ok(n),
        _ => Err(DecodeError::TooMany { what, max }),
    }
}

/// A byte string of exactly `N` bytes.
pub(crate) fn fixed<const N: usize>(
    d: &mut Decoder<'_>,
    what: &'static str,
) -> Result<[u8; N], DecodeError> {
    d.bytes()?.try_into().map_err(|_| DecodeError::Shape(what))
}

/// `null`, or a byte string of exactly `N` bytes.
pub(crate) fn optional_fixed<const N: usize>(
    d: &mut Decoder<'_>,
    what: &'static str,
) -> Result<Option<[u8; N]>, DecodeError> {
    if d.datatype()? == Type::Null {
        d.null()?;
        return Ok(None);
    }
    fixed(d, what).map(Some)
}

/// A byte string of at most `max` bytes, borrowed.
pub(crate) fn bounded_bytes<'b>(
    d: &mut Decoder<'b>,
    max: usize,
    what: &'static str,
) -> Result<&'b [u8], DecodeError> {
    let b = d.bytes()?;
    if b.len() > max {
        return Err(DecodeError::TooLong { what, max });
    }
    Ok(b)
}

/// A text string of at most `max` bytes, borrowed.
pub(crate) fn bounded_str<'b>(
    d: &mut Decoder<'b>,
    max: usize,
    what: &'static str,
) -> Result<&'b str, DecodeError> {
    let s = d.str()?;
    if s.len() > max {
        return Err(DecodeError::TooLong { what, max });
    }
    Ok(s)
}

/// Fail unless the decoder consumed all of `input`.
pub(crate) fn finished(d: &Decoder<'_>, input: &[u8]) -> Result<(), DecodeError> {
    let rest = input.len().saturating_sub(d.position());
    if rest == 0 {
        Ok(())
    } else {
        Err(DecodeError::TrailingBytes(rest))
    }
}

/// Lower-case hex.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    crate::hex::encode(bytes)
}

/// Parse hex (either case) into exactly `N` bytes.
pub(crate) fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    crate::hex::decode_array(s).ok()
}
