//! Go's `time.ParseDuration` syntax, which AEnvironment uses for TTLs: a sequence of decimal numbers, each with a
//! unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), such as `90s`, `1.5h` or `1h30m`. A bare `0` is allowed, as in Go.
//! Unlike Go, negative durations are refused: a TTL cannot be negative.

use std::time::Duration;

use crate::Error;

const UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3_600 * 1_000_000_000),
];

fn err(input: &str, reason: &'static str) -> Error {
    Error::Duration { input: input.to_owned(), reason }
}

/// Parses a Go duration string.
pub fn parse_go_duration(input: &str) -> Result<Duration, Error> {
    let s = input.trim();
    if s.is_empty() {
        return Err(err(input, "it is empty"));
    }
    if s.starts_with('-') {
        return Err(err(input, "it is negative"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total_ns: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number = &rest[..num_len];
        if number.is_empty() || number == "." {
            return Err(err(input, "a number is missing before a unit"));
        }
        if number.matches('.').count() > 1 {
            return Err(err(input, "a number has more than one decimal point"));
        }
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        if unit.is_empty() {
            return Err(err(input, "a unit is missing (a bare number is not a duration)"));
        }
        let Some(&(_, scale)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(err(input, "unknown unit; use ns, us, ms, s, m or h (days are written as 24h)"));
        };
        rest = &rest[unit_len..];
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        let int: u128 =
            if int_part.is_empty() { 0 } else { int_part.parse().map_err(|_| err(input, "a number is too large"))? };
        let mut part = int.checked_mul(scale).ok_or_else(|| err(input, "it is too large"))?;
        // Fractions are exact to the nanosecond, as in Go; further digits are dropped.
        let mut place = scale;
        for digit in frac_part.chars() {
            place /= 10;
            if place == 0 {
                break;
            }
            part += u128::from(digit.to_digit(10).unwrap_or(0)) * place;
        }
        total_ns = total_ns.checked_add(part).ok_or_else(|| err(input, "it is too large"))?;
    }
    let secs = u64::try_from(total_ns / 1_000_000_000).map_err(|_| err(input, "it is too large"))?;
    // `total_ns % 1e9` is below one billion, so it always fits.
    Ok(Duration::new(secs, (total_ns % 1_000_000_000) as u32))
}

/// Formats a duration the way Go prints one (`1h30m0s`, `90s` → `1m30s`), for messages and labels.
pub fn format_go_duration(d: Duration) -> String {
    let total = d.as_secs();
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    let nanos = d.subsec_nanos();
    let secs = if nanos == 0 {
        format!("{s}")
    } else {
        let frac = format!("{nanos:09}");
        format!("{s}.{}", frac.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m{secs}s"),
        (h, m) => format!("{h}h{m}m{secs}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Duration {
        parse_go_duration(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_what_go_parses() {
        assert_eq!(ok("90s"), Duration::from_secs(90));
        assert_eq!(ok("30m"), Duration::from_secs(1800));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("3s"), Duration::from_secs(3));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("1h2m3s4ms5us6ns"), Duration::new(3723, 4_005_006));
        assert_eq!(ok("2µs"), Duration::from_micros(2));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("1.s"), Duration::from_secs(1));
        assert_eq!(ok("+5m"), Duration::from_secs(300));
        assert_eq!(ok(" 10m "), Duration::from_secs(600));
    }

    #[test]
    fn refuses_what_go_refuses_and_negatives() {
        for bad in ["", "   ", "30", "1d", "h", "1h30", "-5m", "1..5s", ".s", "5 m", "1hh", "abc", "1x", "5M"] {
            let e = parse_go_duration(bad).expect_err(bad);
            assert!(e.to_string().contains("Go duration"), "{bad}: {e}");
        }
        assert!(parse_go_duration("1d").unwrap_err().to_string().contains("24h"));
        assert!(parse_go_duration("99999999999999999999999h").is_err());
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format_go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_go_duration(Duration::ZERO), "0s");
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any input: an answer, never a panic.
        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = parse_go_duration(&s);
        }

        /// Near-valid input (digits, dots, units) exercises the parser's corners.
        #[test]
        fn near_valid_never_panics(s in "[0-9.]{0,25}(ns|us|µs|ms|s|m|h|d|x)?([0-9.]{0,5}(s|m|h))?") {
            let _ = parse_go_duration(&s);
        }

        /// What is formatted parses back to the same duration.
        #[test]
        fn format_then_parse_round_trips(secs in 0u64..10_000_000, nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            prop_assert_eq!(parse_go_duration(&format_go_duration(d)).unwrap(), d);
        }
    }
}
