//! Durations as users write them: `500ms`, `30s`, `10m`, `1h`, `2d`; a bare number is seconds.

use std::fmt;
use std::time::Duration;

/// Why a duration text is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing given.
    #[error("empty duration; write one like 30s, 10m, 1h or 2d")]
    Empty,
    /// Not a number followed by one sigil.
    #[error(
        "invalid duration {0:?}; write a whole number with an optional unit: ms, s, m, h, d (e.g. 600, 10m, 1h)"
    )]
    Invalid(String),
    /// Too large to represent.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parse `text` (surrounding whitespace ignored).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(DurationError::Empty);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(DurationError::Invalid(t.to_owned()));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| DurationError::Overflow(t.to_owned()))?;
    let millis_per = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(DurationError::Invalid(t.to_owned())),
    };
    n.checked_mul(millis_per)
        .map(Duration::from_millis)
        .ok_or_else(|| DurationError::Overflow(t.to_owned()))
}

/// A duration printed in the largest unit that divides it exactly: `10m`, `1500ms`.
pub struct DisplayDuration(pub Duration);

impl fmt::Display for DisplayDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        for (unit, per) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if ms > 0 && ms.is_multiple_of(per) {
                return write!(f, "{}{unit}", ms / per);
            }
        }
        write!(f, "{ms}ms")
    }
}

/// Unix seconds as an RFC 3339 UTC time, e.g. `2026-11-24T10:00:00Z`.
pub fn unix_time(secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(secs.min(253_402_300_799));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `at` as a time of day and how long before `now` it was: `2026-12-04 11:48:05 UTC (3m ago)`.
pub fn ago(at: u64, now: u64) -> String {
    match now.saturating_sub(at) {
        0 => format!("{} (just now)", unix_time(at)),
        secs => format!(
            "{} ({} ago)",
            unix_time(at),
            DisplayDuration(Duration::from_secs(secs))
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reference_examples_parse() {
        for (t, secs) in [
            ("10000ms", 10),
            ("600s", 600),
            ("600", 600),
            ("10m", 600),
            ("1h", 3600),
            ("1d", 86400),
        ] {
            assert_eq!(parse_duration(t), Ok(Duration::from_secs(secs)), "{t}");
        }
        assert_eq!(parse_duration(" 5s\n"), Ok(Duration::from_secs(5)));
    }

    #[test]
    fn bad_durations_are_refused() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        for t in ["s", "10x", "1.5h", "-1s", "10 m", "1h30m", "ms"] {
            assert!(
                matches!(parse_duration(t), Err(DurationError::Invalid(_))),
                "{t}"
            );
        }
        assert!(matches!(
            parse_duration("99999999999999999999d"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            parse_duration("999999999999999999d"),
            Err(DurationError::Overflow(_))
        ));
    }

    proptest! {
        #[test]
        fn display_parses_back(ms in 0u64..10_000_000_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_duration(&DisplayDuration(d).to_string()), Ok(d));
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,40}") {
            let _ = parse_duration(&s);
        }
    }
}
