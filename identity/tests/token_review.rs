//! TokenReview authentication, with kube's own client over a mocked API server
//! (tower-test): the review asks for the mesh's audience, and the answer decides.

use http::{Request, Response, StatusCode};
use kube::client::Body;
use mesh_identity::tokens::{AUDIENCE, AuthError, ServiceAccount, token_review};
use serde_json::{Value, json};

/// Answers one TokenReview with `status`, returning the review the client sent.
async fn review(token: &str, status: Value) -> (Result<ServiceAccount, AuthError>, Value) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let server = tokio::spawn(async move {
        let (req, respond) = handle.next_request().await.expect("a request");
        assert_eq!(req.method(), http::Method::POST);
        assert_eq!(
            req.uri().path(),
            "/apis/authentication.k8s.io/v1/tokenreviews"
        );
        let body = http_body_util::BodyExt::collect(req.into_body())
            .await
            .expect("body")
            .to_bytes();
        let mut sent: Value = serde_json::from_slice(&body).expect("json");
        let answer = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": sent["spec"].clone(),
            "status": status,
        });
        respond.send_response(
            Response::builder()
                .status(StatusCode::CREATED)
                .body(Body::from(serde_json::to_vec(&answer).expect("json")))
                .expect("response"),
        );
        sent["spec"].take()
    });
    let result = token_review(client, token.as_bytes()).await;
    (result, server.await.expect("server"))
}

#[tokio::test]
async fn a_valid_token_names_its_service_account() {
    let (result, spec) = review(
        "tok\n",
        json!({"authenticated": true, "audiences": [AUDIENCE],
               "user": {"username": "system:serviceaccount:shop:web"}}),
    )
    .await;
    assert_eq!(spec["token"], "tok", "sent trimmed");
    assert_eq!(spec["audiences"], json!([AUDIENCE]), "audience-bound");
    assert_eq!(
        result,
        Ok(ServiceAccount {
            namespace: "shop".into(),
            name: "web".into()
        })
    );
}

#[tokio::test]
async fn refusals_say_why() {
    let (result, _) = review(
        "t",
        json!({"authenticated": false, "error": "token has expired"}),
    )
    .await;
    assert_eq!(result, Err(AuthError::Expired));
    let (result, _) = review("t", json!({"authenticated": false})).await;
    assert_eq!(result, Err(AuthError::Unknown));
    // A token for another audience (the API server's default one, say).
    let (result, _) = review(
        "t",
        json!({"authenticated": true, "audiences": ["https://kubernetes.default.svc"],
               "user": {"username": "system:serviceaccount:shop:web"}}),
    )
    .await;
    assert_eq!(result, Err(AuthError::WrongAudience));
    // A user that is not a service account.
    let (result, _) = review(
        "t",
        json!({"authenticated": true, "audiences": [AUDIENCE],
               "user": {"username": "jane@example.com"}}),
    )
    .await;
    assert_eq!(result, Err(AuthError::Unknown));
}

#[tokio::test]
async fn an_unreachable_api_server_is_unavailable_not_unknown() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    tokio::spawn(async move {
        let (_, respond) = handle.next_request().await.expect("a request");
        respond.send_response(
            Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .body(Body::from(b"{}".to_vec()))
                .expect("response"),
        );
    });
    let result = token_review(client, b"t").await;
    assert!(
        matches!(result, Err(AuthError::Unavailable(_))),
        "{result:?}"
    );
}
