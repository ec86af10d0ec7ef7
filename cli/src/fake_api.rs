//! A fake Kubernetes API for kube's client over tower-test, for unit tests.

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

/// A fake API server: `objects` by path; anything else is 404. SelfSubjectAccessReviews
/// are answered `allowed`.
pub async fn serve(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    objects: Vec<(&'static str, Value)>,
    allowed: bool,
) {
    while let Some((req, respond)) = handle.next_request().await {
        let path = req.uri().path().to_owned();
        let (status, body) = if path.ends_with("/selfsubjectaccessreviews") {
            let body = http_body_util::BodyExt::collect(req.into_body())
                .await
                .expect("body")
                .to_bytes();
            let mut review: Value = serde_json::from_slice(&body).expect("json");
            review["status"] = json!({"allowed": allowed});
            (201, review)
        } else if let Some((_, v)) = objects.iter().find(|(p, _)| *p == path) {
            // A `Status` object is answered with its code (403, 500, …).
            let code = if v["kind"] == "Status" {
                v["code"].as_u64().unwrap_or(500) as u16
            } else {
                200
            };
            (code, v.clone())
        } else {
            (
                404,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("{path} not found")}),
            )
        };
        respond.send_response(
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&body).expect("json")))
                .expect("response"),
        );
    }
}

/// A `Status` answer with `code`, as the API server sends for errors.
pub fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": format!("{reason} (fake API)")})
}
