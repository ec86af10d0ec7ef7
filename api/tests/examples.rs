//! The mesh's own kinds in `../shared/examples` parse exactly as users wrote them, and
//! validation names the field of every invalid input.

use std::time::Duration;

use mesh_api::profile::RouteSpec;
use mesh_api::{Quantity, ServiceProfileSpec, TrafficSplitSpec};
use serde::Deserialize;

fn example(name: &str) -> mesh_api::yaml::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/examples/").to_string() + name;
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    mesh_api::yaml::from_str(&text).expect("yaml")
}

fn spec<T: for<'de> Deserialize<'de>>(doc: &mesh_api::yaml::Value) -> T {
    serde_json::from_value(doc["spec"].clone()).expect("spec parses")
}

#[test]
fn the_webapp_service_profile_example_is_accepted_as_written() {
    let doc = example("serviceprofile-webapp.yaml");
    assert_eq!(doc["apiVersion"], "linkerd.io/v1alpha2");
    let profile: ServiceProfileSpec = spec(&doc);
    assert_eq!(profile.validate(), vec![]);
    let [get, post]: &[RouteSpec; 2] = profile.routes.as_slice().try_into().expect("two routes");
    assert_eq!(get.name, "GET");
    assert_eq!(get.condition.method.as_deref(), Some("GET"));
    assert!(!get.response_classes[0].is_failure);
    assert!(!get.retryable());
    assert_eq!(post.condition.path_regex.as_deref(), Some("/api"));
    assert_eq!(post.timeout(), Some(Duration::from_secs(30)));
    // The route-level budget makes POST /api retryable with a budget of its own.
    assert!(post.retryable());
    assert_eq!(
        post.retry_budget.as_ref().and_then(|b| b.ttl()),
        Some(Duration::from_secs(10))
    );
    assert_eq!(
        profile
            .retry_budget
            .expect("shared budget")
            .min_retries_per_second,
        10
    );
}

#[test]
fn the_traffic_split_example_is_accepted_as_written() {
    let doc = example("trafficsplit-web-svc.yaml");
    assert_eq!(doc["apiVersion"], "split.smi-spec.io/v1alpha1");
    let split: TrafficSplitSpec = spec(&doc);
    assert_eq!(split.validate(), vec![]);
    assert_eq!(split.service, "web-svc");
    let weights: Vec<_> = split
        .backends
        .iter()
        .map(|b| (b.service.as_str(), b.weight))
        .collect();
    assert_eq!(
        weights,
        [
            ("web-svc-v1", Quantity(500_000)),
            ("web-svc-v2", Quantity(500_000))
        ]
    );
}

#[test]
fn later_split_versions_and_quantities_parse() {
    let split: TrafficSplitSpec = mesh_api::yaml::from_str(
        "service: web\nbackends:\n- {service: v1, weight: 800m}\n- {service: v2, weight: 200m}\n- {service: v3, weight: 0}\nmatches: [{kind: HTTPRouteGroup, name: x}]\n",
    )
    .expect("parses, ignoring unknown fields");
    assert_eq!(split.backends[0].weight, Quantity(800));
    assert_eq!(split.backends[2].weight, Quantity(0));
}

#[test]
fn invalid_profiles_name_each_bad_field() {
    let profile: ServiceProfileSpec = mesh_api::yaml::from_str(
        r#"
routes:
- name: broken
  condition:
    all:
    - pathRegex: "/api/(unclosed"
    - not: {method: "GE T"}
  responseClasses:
  - condition: {status: {min: 500, max: 400}}
    isFailure: true
  timeout: soon
  retryBudget: {retryRatio: -1, minRetriesPerSecond: 1, ttl: 90s}
- name: ""
  condition: {method: GET}
retryBudget: {retryRatio: 0.2, minRetriesPerSecond: 10, ttl: 500ms}
unknownField: ignored
"#,
    )
    .expect("structure parses");
    let errors: Vec<String> = profile.validate().iter().map(|e| e.path.clone()).collect();
    assert_eq!(
        errors,
        [
            "spec.routes[0].condition.all[0].pathRegex",
            "spec.routes[0].condition.all[1].not.method",
            "spec.routes[0].responseClasses[0].condition.status",
            "spec.routes[0].timeout",
            "spec.routes[0].retryBudget.retryRatio",
            "spec.routes[0].retryBudget.ttl",
            "spec.routes[1].name",
            "spec.retryBudget.ttl",
        ]
    );
}

#[test]
fn invalid_splits_are_refused() {
    let zero: TrafficSplitSpec = mesh_api::yaml::from_str(
        "service: web\nbackends:\n- {service: a, weight: 0}\n- {service: b, weight: 0m}\n",
    )
    .expect("parses");
    assert_eq!(
        zero.validate()[0].to_string(),
        "spec.backends: weights sum to zero"
    );
    let negative = mesh_api::yaml::from_str::<TrafficSplitSpec>(
        "service: web\nbackends:\n- {service: a, weight: -5}\n",
    );
    assert!(negative.is_err());
    let none: TrafficSplitSpec = mesh_api::yaml::from_str("service: web\n").expect("parses");
    assert_eq!(none.validate()[0].path, "spec.backends");
}

#[test]
fn huge_weights_and_deep_conditions_are_refused_not_overflowed() {
    let huge = mesh_api::yaml::from_str::<TrafficSplitSpec>(
        "service: web\nbackends:\n- {service: a, weight: 9223372036854775807}\n",
    );
    assert!(huge.is_err(), "{huge:?}");
    let big: TrafficSplitSpec =
        mesh_api::yaml::from_str("service: web\nbackends:\n- {service: a, weight: 2000000}\n")
            .expect("parses");
    assert_eq!(big.validate()[0].path, "spec.backends[0].weight");
    let deep = (0..40).fold("{method: GET}".to_string(), |inner, _| {
        format!("{{not: {inner}}}")
    });
    let profile: ServiceProfileSpec =
        mesh_api::yaml::from_str(&format!("routes:\n- name: deep\n  condition: {deep}\n"))
            .expect("parses");
    let errors = profile.validate();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].message.contains("nested more than"), "{errors:?}");
}

/// A route regex that would stall the proxy is refused with the reason; what real
/// routes use compiles, and matches as Linkerd's would.
#[test]
fn route_regexes_are_bounded() {
    use mesh_api::profile::{anchored, compile_anchored};
    let evil = compile_anchored(&anchored("(?:[a-z0-9/]{1,60}){200}Z"));
    let reason = evil.expect_err("the stalling regex is refused");
    assert!(reason.contains("compiles to more than 32 KiB"), "{reason}");
    for (pattern, path, matches) in [
        ("/authors/\\w+/books", "/authors/ann_2/books", true),
        ("/books/[^/]+", "/books/12", true),
        ("/books/[^/]+", "/books/12/x", false),
        ("(?i)/API/.*", "/api/x", true),
        ("/v2(/.*)?", "/v2example", false),
        ("/\\p{Greek}+", "/abc", false),
        ("[\\w/]{1,100}", "/a/b", true),
        ("/", "/", true),
    ] {
        let re = compile_anchored(&anchored(pattern)).expect(pattern);
        assert_eq!(re.is_match(path.as_bytes()), matches, "{pattern} on {path}");
    }
    let unicode = compile_anchored(&anchored("/\\p{L}+")).expect_err("too large");
    assert!(unicode.contains("Unicode classes"), "{unicode}");
    let invalid = compile_anchored(&anchored("/api/(unclosed")).expect_err("invalid");
    assert!(invalid.starts_with("invalid regex"), "{invalid}");
}
