//! Parsing of the Go-style durations the API accepts (`500ms`, `90s`, `2m`, `1h30m`).

use std::time::Duration;

/// A duration string that does not follow the API's format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: use a number with a unit of ms, s, m or h, such as 500ms, 90s, 2m or 1h30m"
)]
pub struct DurationError {
    pub input: String,
}

/// Parses a duration such as `1h30m` or `0.5s`. Accepts exactly what the CRD's pattern accepts.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = || DurationError {
        input: input.to_string(),
    };
    if input.is_empty() {
        return Err(err());
    }
    let mut total_ms: f64 = 0.0;
    let mut rest = input;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        let number = &rest[..num_len];
        if number.is_empty()
            || number.starts_with('.')
            || number.ends_with('.')
            || number.matches('.').count() > 1
        {
            return Err(err());
        }
        let value: f64 = number.parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let (unit_ms, unit_len) = if rest.starts_with("ms") {
            (1.0, 2)
        } else if rest.starts_with('s') {
            (1_000.0, 1)
        } else if rest.starts_with('m') {
            (60_000.0, 1)
        } else if rest.starts_with('h') {
            (3_600_000.0, 1)
        } else {
            return Err(err());
        };
        total_ms += value * unit_ms;
        rest = &rest[unit_len..];
    }
    // Ten years is far beyond any sensible timeout; refusing it keeps arithmetic safe.
    if !total_ms.is_finite() || total_ms > 315_360_000_000.0 {
        return Err(err());
    }
    Ok(Duration::from_millis(total_ms.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0.25s").unwrap(), Duration::from_millis(250));
    }

    #[test]
    fn refuses_bad_forms() {
        for bad in [
            "",
            "5",
            "s",
            "5x",
            "-5s",
            "1.s",
            ".5s",
            "1..2s",
            "5 s",
            "1d",
            "99999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn agrees_with_the_schema_pattern() {
        let re = regex::Regex::new(crate::api::DURATION_PATTERN).unwrap();
        for s in ["500ms", "1h30m", "0.5s", "5", "1.s", "5x", "2m3s", "10h"] {
            assert_eq!(re.is_match(s), parse_duration(s).is_ok(), "{s:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,24}") {
            let _ = parse_duration(&s);
        }
    }
}
