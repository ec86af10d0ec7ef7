//! Kubernetes quantities as TrafficSplit weights write them: `500m`, `1`, `2k`, or a
//! plain integer.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative quantity held exactly, in thousandths (`500m` is 500, `1` is 1000).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(pub u64);

/// Why a quantity did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {input:?}: {reason}")]
pub struct QuantityError {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Quantity {
    /// The largest weight accepted (a million whole units), so that sums of weights
    /// cannot overflow.
    pub const MAX_WEIGHT: Quantity = Quantity(1_000_000_000);

    /// Parses `500m`, `0.5`, `2`, `3k`, `1Ki`; negative values are refused.
    pub fn parse(input: &str) -> Result<Self, QuantityError> {
        let err = |reason| QuantityError {
            input: input.to_string(),
            reason,
        };
        let s = input.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.' && c != '+')
            .unwrap_or(s.len());
        let (num, suffix) = s.split_at(split);
        if num.is_empty() {
            return Err(err(if s.starts_with('-') {
                "negative"
            } else {
                "expected a number"
            }));
        }
        let milli_per_unit: f64 = match suffix {
            "m" => 1.0,
            "" => 1e3,
            "k" => 1e6,
            "M" => 1e9,
            "G" => 1e12,
            "Ki" => 1024.0 * 1e3,
            "Mi" => 1024.0 * 1024.0 * 1e3,
            _ => return Err(err("unknown suffix (use m, k, M, G, Ki or Mi)")),
        };
        let n: f64 = num.parse().map_err(|_| err("bad number"))?;
        let milli = (n * milli_per_unit).round();
        if !milli.is_finite() || milli > u64::MAX as f64 {
            return Err(err("out of range"));
        }
        Ok(Self(milli as u64))
    }
}

impl std::fmt::Display for Quantity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Float(f64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) if n >= 0 => (n as u64)
                .checked_mul(1000)
                .map(Self)
                .ok_or_else(|| serde::de::Error::custom("quantity out of range")),
            Raw::Int(_) => Err(serde::de::Error::custom("negative quantity")),
            Raw::Float(f) => Self::parse(&f.to_string()).map_err(serde::de::Error::custom),
            Raw::Str(s) => Self::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_weights() {
        assert_eq!(Quantity::parse("500m"), Ok(Quantity(500)));
        assert_eq!(Quantity::parse("1"), Ok(Quantity(1000)));
        assert_eq!(Quantity::parse("0.2"), Ok(Quantity(200)));
        assert_eq!(Quantity::parse("2k"), Ok(Quantity(2_000_000)));
        assert!(Quantity::parse("-1").is_err());
        assert!(Quantity::parse("5x").is_err());
        assert!(Quantity::parse("").is_err());
        let q: Quantity = serde_json::from_str("800").expect("int");
        assert_eq!(q, Quantity(800_000));
        let q: Quantity = serde_json::from_str("\"500m\"").expect("str");
        assert_eq!(q.to_string(), "500m");
    }
}
