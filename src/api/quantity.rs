//! Resource quantities (`100m`, `0.5`, `64Mi`, `1e3`), read by the grammar the API server
//! itself uses. `check`, the operator and the bench all read them here, so a manifest that one
//! of them accepts is never refused by another.

use std::cmp::Ordering;

/// A text that the API server would not read as a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a quantity")]
pub struct NotAQuantity;

/// A parsed quantity. Equal amounts compare equal however they are written ("0.5", "500m").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantity {
    negative: bool,
    /// `digits × 10^exponent` with no trailing zero in `digits`, when it fits in 128 bits.
    exact: Option<(u128, i64)>,
    /// The value rounded to the nearest f64 (from `exact` when there is one, so that equal
    /// amounts give the same f64).
    value: f64,
}

/// Reads a quantity: an optional sign, a decimal number, then at most one suffix: a decimal
/// SI one (`n u m k M G T P E`), a binary one (`Ki Mi Gi Ti Pi Ei`) or an exponent (`e3`).
pub fn parse(text: &str) -> Result<Quantity, NotAQuantity> {
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(NotAQuantity);
    }
    let (suffix_exp10, exp2) = suffix_exponents(suffix).ok_or(NotAQuantity)?;
    let fraction_len = i64::try_from(fraction.len()).map_err(|_| NotAQuantity)?;
    let exp10 = suffix_exp10.checked_sub(fraction_len).ok_or(NotAQuantity)?;
    let exact = exact(whole, fraction, exp10, exp2);
    let magnitude = match exact {
        Some((digits, exponent)) => format!("{digits}e{exponent}").parse::<f64>(),
        None => format!("{whole}{fraction}e{exp10}")
            .parse::<f64>()
            .map(|v| v * 2f64.powi(exp2 as i32)),
    }
    .map_err(|_| NotAQuantity)?;
    let negative = negative && magnitude != 0.0;
    Ok(Quantity {
        negative,
        exact,
        value: if negative { -magnitude } else { magnitude },
    })
}

/// A quantity's value as a float, `None` when `text` is no quantity.
pub fn value(text: &str) -> Option<f64> {
    parse(text).ok().map(|q| q.value())
}

/// The powers of ten and of two a suffix stands for.
fn suffix_exponents(suffix: &str) -> Option<(i64, u32)> {
    Some(match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        e if e.starts_with(['e', 'E']) && e.len() > 1 => (e[1..].parse().ok()?, 0),
        _ => return None,
    })
}

/// The digits as one integer with the binary factor applied, trailing zeros moved into the
/// exponent; `None` when that does not fit in 128 bits.
fn exact(whole: &str, fraction: &str, mut exp10: i64, exp2: u32) -> Option<(u128, i64)> {
    let mut digits: u128 = 0;
    for c in whole.chars().chain(fraction.chars()) {
        let d = u128::from(c.to_digit(10)?);
        digits = digits.checked_mul(10)?.checked_add(d)?;
    }
    digits = digits.checked_mul(1u128.checked_shl(exp2)?)?;
    if digits == 0 {
        return Some((0, 0));
    }
    while digits.is_multiple_of(10) {
        digits /= 10;
        exp10 = exp10.checked_add(1)?;
    }
    Some((digits, exp10))
}

impl Quantity {
    /// The value as a float (rounded; exact for what fits in an f64).
    pub fn value(&self) -> f64 {
        self.value
    }

    /// Below zero (a resource amount must not be).
    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// One spelling per value ("0.5", "500m" and "5e-1" all give "5e-1"; "1Gi" and "1024Mi"
    /// give "1073741824e0"), or `None` when the value has too many digits to write exactly.
    pub fn canonical(&self) -> Option<String> {
        let (digits, exp10) = self.exact?;
        if digits == 0 {
            return Some("0".into());
        }
        let sign = if self.negative { "-" } else { "" };
        Some(format!("{sign}{digits}e{exp10}"))
    }

    /// Compares by value: "1Gi" is more than "1G", "500m" equals "0.5".
    pub fn cmp_value(&self, other: &Self) -> Ordering {
        if let (Some(a), Some(b)) = (self.exact, other.exact)
            && self.negative == other.negative
            && let Some(order) = cmp_exact(a, b)
        {
            return if self.negative {
                order.reverse()
            } else {
                order
            };
        }
        self.value.total_cmp(&other.value)
    }
}

/// Compares two non-negative `digits × 10^exponent`, `None` when aligning them overflows.
fn cmp_exact((a, ea): (u128, i64), (b, eb): (u128, i64)) -> Option<Ordering> {
    if a == 0 || b == 0 {
        return Some(a.cmp(&b));
    }
    let shift = u32::try_from(ea.abs_diff(eb)).ok()?;
    let scale = 10u128.checked_pow(shift);
    Some(match ea.cmp(&eb) {
        Ordering::Equal => a.cmp(&b),
        // The one with the larger exponent may not fit once aligned: then it is larger.
        Ordering::Greater => scale
            .and_then(|s| a.checked_mul(s))
            .map_or(Ordering::Greater, |a| a.cmp(&b)),
        Ordering::Less => scale
            .and_then(|s| b.checked_mul(s))
            .map_or(Ordering::Less, |b| a.cmp(&b)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canonical(s: &str) -> Option<String> {
        parse(s).ok().and_then(|q| q.canonical())
    }

    #[test]
    fn known_values() {
        for (text, value) in [
            ("100m", 0.1),
            ("1Gi", 1024f64.powi(3)),
            ("1e3", 1000.0),
            ("1E3", 1000.0),
            ("1E", 1e18),
            ("1.5", 1.5),
            (".5", 0.5),
            ("5.", 5.0),
            ("+2", 2.0),
            ("-2k", -2000.0),
            ("250u", 0.00025),
            ("3n", 3e-9),
            ("1e+3", 1000.0),
        ] {
            assert_eq!(value_of(text), Some(value), "{text}");
        }
    }

    fn value_of(text: &str) -> Option<f64> {
        value(text)
    }

    #[test]
    fn what_the_api_server_refuses() {
        for bad in [
            "",
            ".",
            "+",
            "-",
            "1.2.3",
            "abc",
            "1x",
            "1e",
            "1kM",
            "1Mi2",
            "half a core",
            "Mi",
            "1..2",
            "--1",
            "1 Gi",
            "0x10",
            "1i",
        ] {
            assert_eq!(parse(bad), Err(NotAQuantity), "{bad:?}");
        }
    }

    #[test]
    fn equal_amounts_compare_equal_and_have_one_spelling() {
        for (a, b) in [
            ("0.5", "500m"),
            ("1Gi", "1024Mi"),
            ("1k", "1e3"),
            ("1000m", "1"),
            ("+2", "2"),
            ("0", "0m"),
            ("-0", "0"),
            ("1.50", "1500m"),
            ("0.1", "100m"),
        ] {
            assert_eq!(canonical(a), canonical(b), "{a} = {b}");
            assert!(canonical(a).is_some());
            let (a, b) = (parse(a).unwrap(), parse(b).unwrap());
            assert_eq!(a.cmp_value(&b), Ordering::Equal);
        }
        assert_ne!(canonical("1Gi"), canonical("1G"));
        assert_ne!(canonical("-1"), canonical("1"));
    }

    #[test]
    fn order_by_value() {
        let cmp = |a: &str, b: &str| parse(a).unwrap().cmp_value(&parse(b).unwrap());
        assert_eq!(cmp("1Gi", "1G"), Ordering::Greater);
        assert_eq!(cmp("64Mi", "32Mi"), Ordering::Greater);
        assert_eq!(cmp("-1", "1m"), Ordering::Less);
        assert_eq!(cmp("-2", "-1"), Ordering::Less);
        assert_eq!(cmp("1e40", "9e39"), Ordering::Greater);
        assert_eq!(cmp("1e-40", "0"), Ordering::Greater);
        assert!(!parse("-0").unwrap().is_negative());
        assert!(parse("-1m").unwrap().is_negative());
    }

    /// A value of many digits is still a quantity; it compares by its float value.
    #[test]
    fn long_values_parse_without_an_exact_form() {
        let long = "9".repeat(300 * 1024);
        let q = parse(&long).unwrap();
        assert_eq!(q.canonical(), None);
        assert_eq!(q.cmp_value(&parse("1E").unwrap()), Ordering::Greater);
        assert_eq!(parse(&(long + "x")), Err(NotAQuantity));
    }

    proptest! {
        #[test]
        fn milli_units_agree_with_every_spelling(milli in 0u64..10_000_000, other in 0u64..10_000_000) {
            let q = parse(&format!("{milli}m")).unwrap();
            let plain = format!("{}.{:03}", milli / 1000, milli % 1000);
            prop_assert_eq!(canonical(&plain), q.canonical());
            prop_assert_eq!(canonical(&format!("{milli}e-3")), q.canonical());
            prop_assert_eq!(canonical(&format!("{milli}000u")), q.canonical());
            let o = parse(&format!("{other}m")).unwrap();
            prop_assert_eq!(q.cmp_value(&o), milli.cmp(&other));
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,40}") {
            let _ = parse(&text).map(|q| q.canonical());
        }
    }
}
