//! `mesh profile --template NAME`: a ServiceProfile skeleton for a Service, with every
//! field the mesh acts on shown once and explained, ready to edit and apply.

use anyhow::bail;

/// Whether `s` is a DNS label as Kubernetes names need: lowercase letters, digits and
/// `-`, at most 63, starting (if `letter_first`, with a letter) and ending alphanumeric.
fn is_dns_label(s: &str, letter_first: bool) -> bool {
    let b = s.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(inner)
        && b[0] != b'-'
        && (!letter_first || b[0].is_ascii_lowercase())
        && b[b.len() - 1] != b'-'
}

/// The template for Service `name` in `namespace`.
pub fn template(name: &str, namespace: &str) -> anyhow::Result<String> {
    if !is_dns_label(name, true) {
        bail!(
            "{name:?} is not a Service name: lowercase letters, digits and '-', starting \
             with a letter, at most 63"
        );
    }
    if !is_dns_label(namespace, false) {
        bail!(
            "{namespace:?} is not a namespace name: lowercase letters, digits and '-', at \
             most 63"
        );
    }
    Ok(format!(
        r#"# A ServiceProfile for the Service {name} in {namespace}. Proxies that call it name each
# request's route by the first route whose condition matches, and apply that route's
# timeout, retries and failure classes; metrics and `mesh viz routes` are per route.
# Edit the routes, then: kubectl apply -f FILE
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata:
  # Always the Service's fully qualified name, in the Service's namespace.
  name: {name}.{namespace}.svc.cluster.local
  namespace: {namespace}
spec:
  routes:
  - name: GET /books/{{id}}
    # Every field given must match: method, and a regular expression that must match
    # the whole path. Conditions combine with all, any and not.
    condition:
      method: GET
      pathRegex: /books/[^/]+
    # Safe to repeat: failures are retried, within the retry budget below.
    isRetryable: true
    # The calling proxy answers 504 when the response (all attempts) takes longer.
    timeout: 2s
  - name: POST /books
    condition:
      all:
      - method: POST
      - pathRegex: /books
    # Which responses count as failures (default: 5xx), for success rates and retries.
    responseClasses:
    - condition:
        status:
          min: 500
          max: 599
      isFailure: true
    timeout: 10s
  # Retries may add this share of the requests on top, plus a floor per second, counted
  # over the ttl. A route may have its own retryBudget.
  retryBudget:
    retryRatio: 0.2
    minRetriesPerSecond: 10
    ttl: 10s
"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_dns_labels() {
        assert!(is_dns_label("web-2", true));
        assert!(is_dns_label("2shop", false));
        for (bad, letter_first) in [
            ("", false),
            ("Web", true),
            ("2web", true),
            ("web-", true),
            ("-web", false),
            ("web.shop", true),
            ("web_1", true),
        ] {
            assert!(!is_dns_label(bad, letter_first), "{bad:?}");
        }
        assert!(is_dns_label(&"a".repeat(63), true));
        assert!(!is_dns_label(&"a".repeat(64), true));
        let err = template("Web", "shop").expect_err("refused").to_string();
        assert!(err.contains("\"Web\" is not a Service name"), "{err}");
        let err = template("web", "shop.x").expect_err("refused").to_string();
        assert!(err.contains("not a namespace name"), "{err}");
    }
}
