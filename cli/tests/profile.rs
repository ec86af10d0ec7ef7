//! `mesh profile --template` prints a ServiceProfile the controller accepts as it is and
//! whose routes a proxy applies as their comments say.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use http::Method;
use mesh_controller::dir;
use mesh_controller::index::Object;

fn mesh(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(args)
        .output()
        .expect("run mesh")
}

#[test]
fn the_template_is_a_profile_the_mesh_applies() {
    let out = mesh(&["profile", "--template", "books", "-n", "shop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");

    let mut loaded = dir::Loaded::default();
    dir::parse(Path::new("template.yaml"), &text, &mut loaded);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    assert_eq!(loaded.objects.len(), 1);
    let (at, object, _) = &loaded.objects[0];
    assert_eq!(at.name, "books.shop.svc.cluster.local");
    assert_eq!(at.namespace, "shop");
    let Object::ServiceProfile(spec) = object else {
        panic!("not a ServiceProfile: {object:?}");
    };
    assert!(spec.validate().is_empty(), "{:?}", spec.validate());

    // What the proxy makes of it.
    let policy = mesh_controller::compile::outbound(&mesh_controller::compile::Outbound {
        domain: "cluster.local",
        namespace: "shop",
        name: "books",
        port: 80,
        profile: Some((&at.name, spec)),
        split: None,
    });
    let profile = mesh_proxy::profile::Profile::compile(&policy).expect("the proxy applies it");
    let route = |method: Method, path: &str| {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .expect("request");
        profile.route(&req)
    };
    let get = route(Method::GET, "/books/42").expect("GET /books/42 matches");
    assert_eq!(&*get.name, "GET /books/{id}");
    assert_eq!(get.timeout, Some(Duration::from_secs(2)));
    assert!(
        get.budget.is_some(),
        "retryable, under the profile's budget"
    );
    let post = route(Method::POST, "/books").expect("POST /books matches");
    assert_eq!(&*post.name, "POST /books");
    assert_eq!(post.timeout, Some(Duration::from_secs(10)));
    assert!(post.budget.is_none(), "not retryable");
    assert_eq!(post.is_failure(http::StatusCode::BAD_GATEWAY), Some(true));
    // The whole path must match.
    assert!(route(Method::GET, "/books/42/reviews").is_none());
    assert!(route(Method::POST, "/books/42").is_none());
    assert!(route(Method::DELETE, "/books/42").is_none());
}

#[test]
fn the_namespace_defaults_and_bad_names_are_refused() {
    let out = mesh(&["profile", "--template", "web"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("name: web.default.svc.cluster.local\n  namespace: default\n"),
        "{text}"
    );

    for args in [
        ["profile", "--template", "Web", "-n", "shop"],
        ["profile", "--template", "web.shop", "-n", "shop"],
        ["profile", "--template", "web", "-n", "Shop_1"],
    ] {
        let out = mesh(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "nothing printed for {args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is not a"), "{args:?}: {err}");
    }
}
