//! Linkerd's client-policy annotations, as users put them on Services, HTTPRoutes and
//! GRPCRoutes: retries (`retry.linkerd.io/*`), timeouts (`timeout.linkerd.io/*`) and,
//! on Services, failure accrual (`balancer.linkerd.io/failure-accrual*`). A value
//! that does not parse refuses the object, naming the annotation.

use std::collections::BTreeMap;
use std::time::Duration;

use mesh_api::FieldError;

/// Which HTTP responses are retried: codes, ranges, `gateway-error`, `5xx`.
pub const RETRY_HTTP: &str = "retry.linkerd.io/http";
/// Which gRPC statuses are retried, by name.
pub const RETRY_GRPC: &str = "retry.linkerd.io/grpc";
/// Retries per request (1 when absent).
pub const RETRY_LIMIT: &str = "retry.linkerd.io/limit";
/// Each attempt's timeout: an attempt that takes longer is retried.
pub const RETRY_TIMEOUT: &str = "retry.linkerd.io/timeout";
/// The whole request's timeout, retries included.
pub const TIMEOUT_REQUEST: &str = "timeout.linkerd.io/request";
/// Each backend response's timeout (not retried).
pub const TIMEOUT_RESPONSE: &str = "timeout.linkerd.io/response";
/// How long a stream may stay idle.
pub const TIMEOUT_IDLE: &str = "timeout.linkerd.io/idle";
/// `consecutive`: endpoints failing in a row leave the balancer for a while.
pub const ACCRUAL: &str = "balancer.linkerd.io/failure-accrual";
/// Failures in a row that take an endpoint out (7 when absent).
pub const ACCRUAL_MAX_FAILURES: &str =
    "balancer.linkerd.io/failure-accrual-consecutive-max-failures";
/// The first penalty (1s when absent).
pub const ACCRUAL_MIN_PENALTY: &str = "balancer.linkerd.io/failure-accrual-consecutive-min-penalty";
/// The longest penalty (1m when absent).
pub const ACCRUAL_MAX_PENALTY: &str = "balancer.linkerd.io/failure-accrual-consecutive-max-penalty";
/// How much penalties vary at random (0.5 when absent).
pub const ACCRUAL_JITTER: &str = "balancer.linkerd.io/failure-accrual-consecutive-jitter-ratio";

/// A Service's or route's client-policy annotations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientPolicy {
    /// Retries, when any retry annotation is set.
    pub retry: Option<RetryPolicy>,
    /// Timeouts, when any timeout annotation is set.
    pub timeouts: Option<TimeoutPolicy>,
    /// Failure accrual (Services only).
    pub accrual: Option<FailureAccrual>,
}

/// Retries, as the annotations say.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RetryPolicy {
    /// HTTP statuses retried, as ranges.
    pub http: Vec<(u16, u16)>,
    /// gRPC codes retried.
    pub grpc: Vec<u32>,
    /// Retries after the first attempt.
    pub limit: u32,
    /// Each attempt's timeout.
    pub timeout: Option<Duration>,
}

/// Timeouts, as the annotations say.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TimeoutPolicy {
    /// The whole request.
    pub request: Option<Duration>,
    /// Each backend response.
    pub response: Option<Duration>,
    /// Idle streams.
    pub idle: Option<Duration>,
}

/// Consecutive-failure accrual.
#[derive(Clone, Debug, PartialEq)]
pub struct FailureAccrual {
    /// Failures in a row that take an endpoint out.
    pub max_failures: u32,
    /// The first penalty.
    pub min_penalty: Duration,
    /// The longest penalty.
    pub max_penalty: Duration,
    /// How much a penalty varies at random, from 0 to 100 (percent).
    pub jitter_percent: u32,
}

/// gRPC status names Linkerd's annotation takes, and their codes.
const GRPC_CODES: [(&str, u32); 5] = [
    ("cancelled", 1),
    ("deadline-exceeded", 4),
    ("resource-exhausted", 8),
    ("internal", 13),
    ("unavailable", 14),
];

impl ClientPolicy {
    /// Whether no annotation is set.
    pub fn is_empty(&self) -> bool {
        self.retry.is_none() && self.timeouts.is_none() && self.accrual.is_none()
    }
}

/// The client-policy annotations in `annotations`; `service` allows failure accrual
/// (it is a Service's, not a route's).
pub fn parse(
    annotations: Option<&BTreeMap<String, String>>,
    service: bool,
) -> Result<ClientPolicy, Vec<FieldError>> {
    let empty = BTreeMap::new();
    let a = annotations.unwrap_or(&empty);
    let mut errors = Vec::new();
    let field = |name: &str| format!("metadata.annotations[{name:?}]");
    let duration = |name: &str, errors: &mut Vec<FieldError>| {
        let v = a.get(name)?;
        match mesh_api::duration::parse(v.trim()) {
            Ok(d) if d.is_zero() => None,
            Ok(d) => Some(d),
            Err(e) => {
                errors.push(FieldError::new(field(name), e.to_string()));
                None
            }
        }
    };
    let retried = [RETRY_HTTP, RETRY_GRPC, RETRY_LIMIT, RETRY_TIMEOUT]
        .iter()
        .any(|k| a.contains_key(*k));
    let retry = retried.then(|| {
        let mut policy = RetryPolicy {
            limit: 1,
            timeout: duration(RETRY_TIMEOUT, &mut errors),
            ..Default::default()
        };
        if let Some(v) = a.get(RETRY_HTTP) {
            for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let range = match part.to_ascii_lowercase().as_str() {
                    "5xx" => Some((500, 599)),
                    "gateway-error" => Some((502, 504)),
                    p => match p.split_once('-') {
                        Some((lo, hi)) => lo.trim().parse().ok().zip(hi.trim().parse().ok()),
                        None => p.parse().ok().map(|c| (c, c)),
                    },
                };
                match range {
                    Some((lo, hi)) if (100..=599).contains(&lo) && (lo..=599).contains(&hi) => {
                        policy.http.push((lo, hi));
                    }
                    _ => errors.push(FieldError::new(
                        field(RETRY_HTTP),
                        format!(
                            "{part:?} is not a status, a range (500-504), `5xx` or `gateway-error`"
                        ),
                    )),
                }
            }
        }
        if let Some(v) = a.get(RETRY_GRPC) {
            for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                match GRPC_CODES
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(part))
                {
                    Some((_, code)) => policy.grpc.push(*code),
                    None => errors.push(FieldError::new(
                        field(RETRY_GRPC),
                        format!(
                            "{part:?} is not one of {}",
                            GRPC_CODES.map(|(n, _)| n).join(", ")
                        ),
                    )),
                }
            }
        }
        if let Some(v) = a.get(RETRY_LIMIT) {
            match v.trim().parse::<u32>() {
                Ok(n) if n <= 10 => policy.limit = n,
                _ => errors.push(FieldError::new(
                    field(RETRY_LIMIT),
                    format!("{v:?} is not a number of retries from 0 to 10"),
                )),
            }
        }
        policy
    });
    let timed = [TIMEOUT_REQUEST, TIMEOUT_RESPONSE, TIMEOUT_IDLE]
        .iter()
        .any(|k| a.contains_key(*k));
    let timeouts = timed.then(|| TimeoutPolicy {
        request: duration(TIMEOUT_REQUEST, &mut errors),
        response: duration(TIMEOUT_RESPONSE, &mut errors),
        idle: duration(TIMEOUT_IDLE, &mut errors),
    });
    let accrual = match a.get(ACCRUAL).map(|v| v.trim()) {
        None => None,
        Some(_) if !service => {
            errors.push(FieldError::new(
                field(ACCRUAL),
                "failure accrual is set on the Service, not on a route",
            ));
            None
        }
        Some("consecutive") => {
            let max_failures = match a.get(ACCRUAL_MAX_FAILURES) {
                None => 7,
                Some(v) => match v.trim().parse::<u32>() {
                    Ok(n) if n > 0 => n,
                    _ => {
                        errors.push(FieldError::new(
                            field(ACCRUAL_MAX_FAILURES),
                            format!("{v:?} is not a positive number"),
                        ));
                        7
                    }
                },
            };
            let min = duration(ACCRUAL_MIN_PENALTY, &mut errors).unwrap_or(Duration::from_secs(1));
            let max = duration(ACCRUAL_MAX_PENALTY, &mut errors).unwrap_or(Duration::from_secs(60));
            if min > max {
                errors.push(FieldError::new(
                    field(ACCRUAL_MIN_PENALTY),
                    "longer than the maximum penalty",
                ));
            }
            let jitter = match a.get(ACCRUAL_JITTER) {
                None => 0.5,
                Some(v) => match v.trim().parse::<f64>() {
                    Ok(j) if (0.0..=1.0).contains(&j) => j,
                    _ => {
                        errors.push(FieldError::new(
                            field(ACCRUAL_JITTER),
                            format!("{v:?} is not a ratio from 0 to 1"),
                        ));
                        0.5
                    }
                },
            };
            Some(FailureAccrual {
                max_failures,
                min_penalty: min,
                max_penalty: max,
                jitter_percent: (jitter * 100.0).round() as u32,
            })
        }
        Some(other) => {
            errors.push(FieldError::new(
                field(ACCRUAL),
                format!("{other:?}: the only kind is `consecutive`"),
            ));
            None
        }
    };
    if errors.is_empty() {
        Ok(ClientPolicy {
            retry,
            timeouts,
            accrual,
        })
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn linkerd_annotations_parse_as_linkerd_reads_them() {
        let p = parse(
            Some(&of(&[
                (RETRY_HTTP, "5xx, 429, 400-404, gateway-error"),
                (RETRY_GRPC, "unavailable,Internal"),
                (RETRY_LIMIT, "3"),
                (RETRY_TIMEOUT, "300ms"),
                (TIMEOUT_REQUEST, "10s"),
                (TIMEOUT_IDLE, "1m"),
                (ACCRUAL, "consecutive"),
                (ACCRUAL_MAX_FAILURES, "3"),
            ])),
            true,
        )
        .expect("valid");
        let retry = p.retry.expect("retry");
        assert_eq!(retry.http, [(500, 599), (429, 429), (400, 404), (502, 504)]);
        assert_eq!(retry.grpc, [14, 13]);
        assert_eq!(
            (retry.limit, retry.timeout),
            (3, Some(Duration::from_millis(300)))
        );
        let t = p.timeouts.expect("timeouts");
        assert_eq!(
            (t.request, t.response, t.idle),
            (
                Some(Duration::from_secs(10)),
                None,
                Some(Duration::from_secs(60))
            )
        );
        let a = p.accrual.expect("accrual");
        assert_eq!(
            (
                a.max_failures,
                a.min_penalty,
                a.max_penalty,
                a.jitter_percent
            ),
            (3, Duration::from_secs(1), Duration::from_secs(60), 50)
        );
        // A limit alone: retries with the default conditions (none) and Linkerd's
        // default limit otherwise.
        let p = parse(Some(&of(&[(RETRY_TIMEOUT, "1s")])), false).expect("valid");
        assert_eq!(p.retry.map(|r| r.limit), Some(1));
        assert!(parse(None, true).expect("none").is_empty());
    }

    #[test]
    fn bad_values_are_refused_naming_the_annotation() {
        let e = parse(
            Some(&of(&[
                (RETRY_HTTP, "5xx,600,abc"),
                (RETRY_GRPC, "not-found"),
                (RETRY_LIMIT, "many"),
                (TIMEOUT_REQUEST, "soon"),
                (ACCRUAL, "consecutive"),
                (ACCRUAL_JITTER, "2"),
            ])),
            false,
        )
        .expect_err("invalid");
        let fields: Vec<_> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.annotations[\"retry.linkerd.io/http\"]",
                "metadata.annotations[\"retry.linkerd.io/http\"]",
                "metadata.annotations[\"retry.linkerd.io/grpc\"]",
                "metadata.annotations[\"retry.linkerd.io/limit\"]",
                "metadata.annotations[\"timeout.linkerd.io/request\"]",
                "metadata.annotations[\"balancer.linkerd.io/failure-accrual\"]",
            ]
        );
    }
}
