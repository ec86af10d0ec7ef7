use super::*;
use pb::string_match::Kind as S;

fn exact(s: &str) -> pb::StringMatch {
    pb::StringMatch {
        kind: Some(S::Exact(s.into())),
    }
}

fn prefix(s: &str) -> pb::StringMatch {
    pb::StringMatch {
        kind: Some(S::Prefix(s.into())),
    }
}

fn source(name: &str) -> Option<pb::ObjectRef> {
    Some(pb::ObjectRef {
        kind: "AuthorizationPolicy".into(),
        namespace: "default".into(),
        name: name.into(),
    })
}

fn authz(
    name: &str,
    action: pb::AuthorizationAction,
    rules: Vec<pb::AuthorizationRule>,
) -> pb::Authorization {
    pb::Authorization {
        source: source(name),
        action: action.into(),
        rules,
    }
}

fn client(identity: Option<&str>) -> Client<'_> {
    Client {
        addr: "10.1.2.3".parse().expect("ip"),
        identity,
        dst: "10.9.9.9:8080".parse().expect("addr"),
    }
}

fn get(path: &str) -> http::Request<()> {
    http::Request::get(path)
        .header("host", "httpbin.default:8000")
        .body(())
        .expect("request")
}

const SLEEP: &str = "sleep.default.serviceaccount.identity.mesh.cluster.local";
const OTHER: &str = "web.shop.serviceaccount.identity.mesh.cluster.local";

/// The examples' `httpbin` policy: from `cluster.local/ns/default/sa/sleep`, GET `/info*`.
fn httpbin() -> pb::Authorization {
    authz(
        "httpbin",
        pb::AuthorizationAction::Allow,
        vec![pb::AuthorizationRule {
            from: vec![pb::Source {
                principals: vec![exact("cluster.local/ns/default/sa/sleep")],
                ..Default::default()
            }],
            to: vec![pb::Operation {
                methods: vec![exact("GET")],
                paths: vec![prefix("/info")],
                ..Default::default()
            }],
            when: vec![],
        }],
    )
}

fn decide(p: &PortPolicy, c: &Client<'_>, req: Option<&http::Request<()>>) -> Decision {
    p.decide(c, req.map(|req| Http { req, auth: None })).0
}

#[test]
fn istio_order_deny_then_allow_then_nothing_else() {
    let p = PortPolicy::compile(&pb::InboundPolicy {
        authorizations: vec![
            httpbin(),
            authz(
                "no-secrets",
                pb::AuthorizationAction::Deny,
                vec![pb::AuthorizationRule {
                    to: vec![pb::Operation {
                        paths: vec![prefix("/info/secret")],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            ),
        ],
        default_policy: pb::DefaultPolicy::Deny.into(),
        ..Default::default()
    });
    let sleep = client(Some(SLEEP));
    assert!(decide(&p, &sleep, Some(&get("/info"))).allowed());
    assert!(decide(&p, &sleep, Some(&get("/info/x?y"))).allowed());
    let denied = decide(&p, &sleep, Some(&get("/info/secret")));
    assert_eq!(&*denied.label().name, "default/no-secrets");
    assert!(!decide(&p, &sleep, Some(&get("/status"))).allowed());
    assert!(!decide(&p, &client(Some(OTHER)), Some(&get("/info"))).allowed());
    assert!(!decide(&p, &client(None), Some(&get("/info"))).allowed());
    let post = http::Request::post("/info").body(()).expect("request");
    assert!(!decide(&p, &sleep, Some(&post)).allowed());
}

#[test]
fn on_opaque_connections_allow_rules_needing_http_never_match_and_deny_rules_ignore_it() {
    let allow_get = PortPolicy::compile(&pb::InboundPolicy {
        authorizations: vec![httpbin()],
        default_policy: pb::DefaultPolicy::Deny.into(),
        ..Default::default()
    });
    assert!(!decide(&allow_get, &client(Some(SLEEP)), None).allowed());
    let deny_get = PortPolicy::compile(&pb::InboundPolicy {
        authorizations: vec![authz(
            "deny-get",
            pb::AuthorizationAction::Deny,
            vec![pb::AuthorizationRule {
                from: vec![pb::Source {
                    namespaces: vec![exact("default")],
                    ..Default::default()
                }],
                to: vec![pb::Operation {
                    methods: vec![exact("GET")],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        )],
        ..Default::default()
    });
    assert!(
        !decide(&deny_get, &client(Some(SLEEP)), None).allowed(),
        "the method is ignored"
    );
    assert!(
        decide(&deny_get, &client(Some(OTHER)), None).allowed(),
        "another namespace"
    );
}

#[test]
fn an_allow_with_no_rules_denies_all_and_an_empty_rule_allows_all() {
    let deny_all = PortPolicy::compile(&pb::InboundPolicy {
        authorizations: vec![authz("deny-all", pb::AuthorizationAction::Allow, vec![])],
        default_policy: pb::DefaultPolicy::Deny.into(),
        ..Default::default()
    });
    assert!(!decide(&deny_all, &client(Some(SLEEP)), Some(&get("/"))).allowed());
    let allow_all = PortPolicy::compile(&pb::InboundPolicy {
        authorizations: vec![authz(
            "allow-all",
            pb::AuthorizationAction::Allow,
            vec![pb::AuthorizationRule::default()],
        )],
        default_policy: pb::DefaultPolicy::Deny.into(),
        ..Default::default()
    });
    assert!(decide(&allow_all, &client(None), Some(&get("/"))).allowed());
    assert!(decide(&allow_all, &client(None), None).allowed());
}

#[test]
fn not_fields_and_conditions() {
    let p = PortPolicy::compile(&pb::InboundPolicy {
        authorizations: vec![authz(
            "x",
            pb::AuthorizationAction::Allow,
            vec![pb::AuthorizationRule {
                from: vec![pb::Source {
                    not_namespaces: vec![exact("shop")],
                    not_networks: vec![pb::Network {
                        cidr: "10.1.0.0/16".into(),
                        except: vec!["10.1.2.0/24".into()],
                    }],
                    ..Default::default()
                }],
                to: vec![pb::Operation {
                    not_paths: vec![prefix("/admin")],
                    ..Default::default()
                }],
                when: vec![pb::Condition {
                    key: "request.headers[x-user]".into(),
                    values: vec![exact("jason")],
                    not_values: vec![],
                }],
            }],
        )],
        default_policy: pb::DefaultPolicy::Deny.into(),
        ..Default::default()
    });
    let jason = |path: &str| {
        http::Request::get(path)
            .header("x-user", "jason")
            .body(())
            .expect("request")
    };
    assert!(decide(&p, &client(Some(SLEEP)), Some(&jason("/a"))).allowed());
    assert!(
        decide(&p, &client(None), Some(&jason("/a"))).allowed(),
        "no namespace is not shop"
    );
    assert!(!decide(&p, &client(Some(OTHER)), Some(&jason("/a"))).allowed());
    assert!(!decide(&p, &client(Some(SLEEP)), Some(&jason("/admin/x"))).allowed());
    assert!(
        !decide(&p, &client(Some(SLEEP)), Some(&get("/a"))).allowed(),
        "no header"
    );
    let mut elsewhere = client(Some(SLEEP));
    elsewhere.addr = "10.1.9.9".parse().expect("ip");
    assert!(
        !decide(&p, &elsewhere, Some(&jason("/a"))).allowed(),
        "a denied network"
    );
}

#[test]
fn default_policies() {
    let with = |d: pb::DefaultPolicy| {
        PortPolicy::compile(&pb::InboundPolicy {
            default_policy: d.into(),
            cluster_networks: vec![pb::Network {
                cidr: "10.0.0.0/8".into(),
                except: vec![],
            }],
            ..Default::default()
        })
    };
    let outside = Client {
        addr: "192.0.2.1".parse().expect("ip"),
        ..client(Some(SLEEP))
    };
    let cases = [
        (pb::DefaultPolicy::AllUnauthenticated, [true, true, true]),
        (pb::DefaultPolicy::AllAuthenticated, [true, false, true]),
        (
            pb::DefaultPolicy::ClusterUnauthenticated,
            [true, true, false],
        ),
        (
            pb::DefaultPolicy::ClusterAuthenticated,
            [true, false, false],
        ),
        (pb::DefaultPolicy::Deny, [false, false, false]),
        (pb::DefaultPolicy::Audit, [true, true, true]),
    ];
    for (d, [meshed, plain, far]) in cases {
        let p = with(d);
        assert_eq!(
            decide(&p, &client(Some(SLEEP)), None).allowed(),
            meshed,
            "{d:?} meshed"
        );
        assert_eq!(
            decide(&p, &client(None), None).allowed(),
            plain,
            "{d:?} plaintext"
        );
        assert_eq!(
            decide(&p, &outside, None).allowed(),
            far,
            "{d:?} outside the cluster"
        );
    }
}

#[test]
fn probes_pass_whatever_the_authorizations() {
    let p = PortPolicy::compile(&pb::InboundPolicy {
        default_policy: pb::DefaultPolicy::Deny.into(),
        probe_paths: vec!["/healthz".into()],
        ..Default::default()
    });
    assert!(p.is_probe(&client(None), &get("/healthz")));
    assert!(!p.is_probe(&client(None), &get("/healthz/x")));
    let post = http::Request::post("/healthz").body(()).expect("request");
    assert!(!p.is_probe(&client(None), &post));
}

mod tokens {
    use super::*;
    use base64::Engine;
    use jsonwebtoken::{EncodingKey, Header};

    /// A P-256 key, its JWKS, and a signer.
    fn key() -> (String, EncodingKey) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let raw = pair.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        }]});
        (
            jwks.to_string(),
            EncodingKey::from_ec_der(&pair.serialize_der()),
        )
    }

    fn token(key: &EncodingKey, claims: serde_json::Value) -> String {
        let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, &claims, key).expect("token")
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_secs()
    }

    #[test]
    fn good_bad_missing_and_expired_tokens() {
        let (jwks, signer) = key();
        let (_, stranger) = key();
        let verifier = jwt::Verifier::compile(&[pb::JwtProvider {
            issuer: "testing@secure.istio.io".into(),
            jwks,
            output_payload_to_header: "x-jwt-payload".into(),
            ..Default::default()
        }]);
        let claims = |exp: u64| {
            serde_json::json!({
                "iss": "testing@secure.istio.io",
                "sub": "testing@secure.istio.io",
                "groups": ["group1", "group2"],
                "exp": exp,
            })
        };
        let bearer = |t: &str| {
            http::Request::get("/headers")
                .header("authorization", format!("Bearer {t}"))
                .body(())
                .expect("request")
        };
        let mut good = bearer(&token(&signer, claims(now() + 600)));
        let v = verifier.verify(&mut good).expect("valid").expect("a token");
        assert_eq!(
            v.principal(),
            "testing@secure.istio.io/testing@secure.istio.io"
        );
        assert_eq!(
            v.claim_strings(&["groups".into()]).expect("groups"),
            ["group1", "group2"]
        );
        assert!(good.headers().get("authorization").is_none(), "stripped");
        assert!(good.headers().contains_key("x-jwt-payload"));

        let mut expired = bearer(&token(&signer, claims(now() - 600)));
        assert!(verifier.verify(&mut expired).is_err());
        let mut forged = bearer(&token(&stranger, claims(now() + 600)));
        assert!(verifier.verify(&mut forged).is_err());
        let mut other_issuer = bearer(&token(
            &signer,
            serde_json::json!({"iss": "evil", "sub": "x", "exp": now() + 600}),
        ));
        assert!(verifier.verify(&mut other_issuer).is_err());
        let mut garbage = bearer("not-a-jwt");
        assert!(verifier.verify(&mut garbage).is_err());
        let mut none = get("/headers");
        assert!(
            verifier
                .verify(&mut none)
                .expect("no token is fine")
                .is_none()
        );
        let mut param = http::Request::get(format!(
            "/headers?a=1&access_token={}",
            token(&signer, claims(now() + 600))
        ))
        .body(())
        .expect("request");
        assert!(verifier.verify(&mut param).expect("valid").is_some());
        assert_eq!(
            param.uri().to_string(),
            "/headers?a=1",
            "the parameter is stripped"
        );
    }

    #[test]
    fn claims_and_request_principals_decide() {
        let (jwks, signer) = key();
        let p = PortPolicy::compile(&pb::InboundPolicy {
            authorizations: vec![authz(
                "require-jwt",
                pb::AuthorizationAction::Allow,
                vec![pb::AuthorizationRule {
                    from: vec![pb::Source {
                        request_principals: vec![exact(
                            "testing@secure.istio.io/testing@secure.istio.io",
                        )],
                        ..Default::default()
                    }],
                    when: vec![pb::Condition {
                        key: "request.auth.claims[groups]".into(),
                        values: vec![exact("group1")],
                        not_values: vec![],
                    }],
                    ..Default::default()
                }],
            )],
            default_policy: pb::DefaultPolicy::Deny.into(),
            jwt_providers: vec![pb::JwtProvider {
                issuer: "testing@secure.istio.io".into(),
                jwks,
                ..Default::default()
            }],
            ..Default::default()
        });
        let with_groups = |groups: &[&str]| {
            let t = token(
                &signer,
                serde_json::json!({
                    "iss": "testing@secure.istio.io", "sub": "testing@secure.istio.io",
                    "groups": groups, "exp": now() + 600,
                }),
            );
            let mut req = http::Request::get("/")
                .header("authorization", format!("Bearer {t}"))
                .body(())
                .expect("request");
            let auth = p.jwt.verify(&mut req).expect("valid");
            p.decide(
                &client(None),
                Some(Http {
                    req: &req,
                    auth: auth.as_ref(),
                }),
            )
            .0
            .allowed()
        };
        assert!(with_groups(&["group1"]));
        assert!(!with_groups(&["group2"]));
        assert!(
            !decide(&p, &client(None), Some(&get("/"))).allowed(),
            "no token"
        );
    }
}
