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

/// A span of whole seconds as a person reads it: its two largest units, the second rounded to
/// the nearest (`30d`, `2h 5m`, `59s`). For what is left of a lifetime or how long ago
/// something happened, where `2591999s` says less than `30d`.
pub struct RoundedDuration(pub u64);

impl fmt::Display for RoundedDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
        // Round to the second-largest unit of the value, then once more in case that carried
        // into a larger unit (86,399 s rounds to 24 h, which is printed as 1d).
        let mut secs = self.0;
        for _ in 0..2 {
            let at = UNITS.iter().position(|(_, per)| secs >= *per).unwrap_or(3);
            if let Some((_, step)) = UNITS.get(at + 1) {
                secs = (secs + step / 2) / step * step;
            }
        }
        let at = UNITS.iter().position(|(_, per)| secs >= *per).unwrap_or(3);
        let (unit, per) = UNITS.get(at).copied().unwrap_or(("s", 1));
        write!(f, "{}{unit}", secs / per)?;
        if let Some((next, step)) = UNITS.get(at + 1)
            && secs % per >= *step
        {
            write!(f, " {}{next}", secs % per / step)?;
        }
        Ok(())
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
        secs => format!("{} ({} ago)", unix_time(at), RoundedDuration(secs)),
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

    #[test]
    fn lifetimes_print_rounded_to_their_two_largest_units() {
        for (secs, shown) in [
            (0, "0s"),
            (59, "59s"),
            (60, "1m"),
            (61, "1m 1s"),
            (3_599, "59m 59s"),
            (7_500, "2h 5m"),
            (7_529, "2h 5m"),
            (7_530, "2h 6m"),
            (86_399, "1d"),
            (2_591_999, "30d"),
            (2_592_000, "30d"),
            (2_505_600 + 5 * 3_600 + 1_799, "29d 5h"),
        ] {
            assert_eq!(RoundedDuration(secs).to_string(), shown, "{secs} s");
        }
    }

    proptest! {
        #[test]
        fn a_rounded_duration_is_within_half_its_last_unit(secs in 0u64..10_000_000_000) {
            let shown = RoundedDuration(secs).to_string();
            let mut total = 0u64;
            let mut last = 1u64;
            for part in shown.split(' ') {
                let d = parse_duration(part).map_err(|e| TestCaseError::fail(e.to_string()))?;
                total += d.as_secs();
                last = [86_400, 3_600, 60, 1].into_iter().find(|u| d.as_secs() % u == 0 && d.as_secs() >= *u).unwrap_or(1);
            }
            prop_assert!(shown.split(' ').count() <= 2, "{shown}");
            prop_assert!(total.abs_diff(secs) <= last / 2 + last % 2, "{secs} shown as {shown}");
        }


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
