//! The mesh's one YAML reader and writer (serde-saphyr, as kube uses), for every
//! manifest, resource file and token file. Untyped documents are JSON values, as the
//! Kubernetes API sees them, with their keys in the order written.
//!
//! Reading keeps what serde_yaml (YAML 1.2) did: `yes`, `on`, `0644` and `1_000` stay
//! strings, so a manifest means what it meant before. Writing quotes every string that
//! kubectl's YAML 1.1 parser would take for something else (`'yes'`, `'0644'`).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// An untyped YAML document.
pub type Value = serde_json::Value;
/// A YAML mapping with string keys, in the order written.
pub type Mapping = serde_json::Map<String, Value>;

/// Why YAML could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct YamlError(String);

fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        with_snippet: false,
    }
}

/// Reads one document as `T`.
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    serde_saphyr::from_str_with_options(text, options()).map_err(|e| YamlError(e.to_string()))
}

/// Reads a stream of documents, in order, skipping empty ones. After a document that
/// is not YAML the stream cannot be followed further: the iterator ends with its error.
pub fn documents(text: &str) -> impl Iterator<Item = Result<Value, YamlError>> {
    let mut reader = std::io::Cursor::new(text.as_bytes());
    let docs: Vec<_> = serde_saphyr::read_with_options::<_, Value>(&mut reader, options())
        .map(|d| d.map_err(|e| YamlError(e.to_string())))
        .filter(|d| !matches!(d, Ok(Value::Null)))
        .collect();
    docs.into_iter()
}

/// Writes `value` as one YAML document.
pub fn to_string<T: Serialize>(value: &T) -> Result<String, YamlError> {
    serde_saphyr::to_string(value).map_err(|e| YamlError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_as_before_and_writes_for_kubectl() {
        let v: Value =
            from_str("a: yes\nb: 0644\nc: 1_000\nd: 8080\ne: true\nz: 1\ny: 2\n").expect("yaml");
        assert_eq!(v["a"], "yes");
        assert_eq!(v["b"], "0644");
        assert_eq!(v["c"], "1_000");
        assert_eq!(v["d"], 8080);
        assert_eq!(v["e"], true);
        let keys: Vec<_> = v.as_object().expect("map").keys().cloned().collect();
        assert_eq!(keys, ["a", "b", "c", "d", "e", "z", "y"], "order kept");
        let out = to_string(&v).expect("writes");
        assert!(
            out.contains("a: 'yes'") || out.contains("a: \"yes\""),
            "{out}"
        );
        assert!(
            out.contains("b: '0644'") || out.contains("b: \"0644\""),
            "{out}"
        );
        assert!(out.contains("d: 8080"), "{out}");
    }

    #[test]
    fn documents_in_order_until_one_is_not_yaml() {
        let docs: Vec<_> = documents("a: 1\n---\n---\nb: 2\n").collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].as_ref().expect("doc")["b"], 2);
        let bad: Vec<_> = documents("a: 1\n---\nb: [1\n---\nc: 3\n").collect();
        assert!(matches!(bad.as_slice(), [Ok(_), Err(_)]), "{bad:?}");
        assert!(from_str::<Value>("a: 1\na: 2\n").is_err(), "duplicate keys");
    }
}
