//! The mesh's one duration grammar, for resources and flags alike: Go's, as
//! Kubernetes and Linkerd write durations (`30s`, `250ms`, `1m30s`, `1.5h`, `0`), and
//! days (`7d`) for certificate lifetimes. A number needs its unit (but `0`).

use std::ops::RangeInclusive;
use std::time::Duration;

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}")]
pub struct DurationError {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Parses a duration (`300ms`, `10s`, `1m30s`, `1.5h`, `7d`, `0`); units are ns, us
/// (or µs), ms, s, m, h and d. Negative durations are refused.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.to_string(),
        reason,
    };
    let s = input.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err("empty"));
    }
    if s.starts_with('-') {
        return Err(err("negative"));
    }
    let mut total = 0f64;
    let mut rest = s.trim_start_matches('+');
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(err("expected a number"));
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| err("bad number"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "" => return Err(err("missing unit (use ms, s, m, h or d)")),
            _ => return Err(err("unknown unit (use ms, s, m, h or d)")),
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    Duration::try_from_secs_f64(total).map_err(|_| err("out of range"))
}

/// Parses a duration that must lie in `range`, with a message fit for a flag's error.
pub fn parse_in(input: &str, range: RangeInclusive<Duration>) -> Result<Duration, String> {
    let d = parse(input).map_err(|e| e.to_string())?;
    if range.contains(&d) {
        return Ok(d);
    }
    let (lo, hi) = (*range.start(), *range.end());
    let bounds = match (lo.is_zero(), hi == Duration::MAX) {
        (_, true) => format!("at least {}", format(lo)),
        (true, false) => format!("at most {}", format(hi)),
        (false, false) => format!("between {} and {}", format(lo), format(hi)),
    };
    Err(format!("invalid duration {input:?}: must be {bounds}"))
}

/// Writes a duration in the grammar [`parse`] reads, in its largest whole unit
/// (`90s` stays `90s`, `86400s` is `1d`).
pub fn format(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    const UNITS: [(u128, &str); 7] = [
        (86_400_000_000_000, "d"),
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    let (size, unit) = UNITS
        .iter()
        .find(|(size, _)| ns.is_multiple_of(*size))
        .copied()
        .unwrap_or((1, "ns"));
    format!("{}{unit}", ns / size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "10", "-1s", "ten", "5w", "s", "1e3s"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bounds_and_formatting() {
        let day = Duration::from_secs(86_400);
        assert_eq!(
            parse_in("2h", Duration::ZERO..=day),
            Ok(Duration::from_secs(7200))
        );
        assert_eq!(
            parse_in("2d", Duration::ZERO..=day),
            Err(r#"invalid duration "2d": must be at most 1d"#.into())
        );
        assert_eq!(
            parse_in(
                "5s",
                Duration::from_secs(10)..=Duration::from_secs(365 * 86_400)
            ),
            Err(r#"invalid duration "5s": must be between 10s and 365d"#.into())
        );
        assert_eq!(
            parse_in("0", Duration::from_millis(1)..=Duration::MAX),
            Err(r#"invalid duration "0": must be at least 1ms"#.into())
        );
        assert!(
            parse_in("2", Duration::ZERO..=day).is_err(),
            "a unit is needed"
        );
        for d in ["90s", "1d", "250ms", "1h", "3us"] {
            assert_eq!(format(parse(d).expect("parses")), d);
        }
    }
}
