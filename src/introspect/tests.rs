//! Introspection against a test introspection server (axum on 127.0.0.1): every answer shape an
//! IdP can give, the status mapping, caching and coalescing, and the phantom token.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::decision::{Decision, Reason};
use crate::engine::{self, Headers, Request};
use crate::fixtures::*;
use crate::local_issuer::{SigningKey, now_secs};
use crate::policy::{DefaultAction, Snapshot};

const CLIENT: &str = "gateway";
const SECRET: &str = "s3cret:with&specials";

struct Idp {
    calls: AtomicU64,
    /// `flap-*` tokens: the answer cycles through failures and one positive answer per turn.
    flaps: AtomicU64,
    /// `flap-*` tokens answered active, recorded before the answer is sent.
    positives: std::sync::Mutex<std::collections::HashSet<String>>,
}

fn answer(claims: Value) -> Response {
    axum::Json(claims).into_response()
}

fn without(mut claims: Value, member: &str) -> Value {
    claims.as_object_mut().expect("object").remove(member);
    claims
}

fn active(extra: Value) -> Value {
    let mut claims = json!({"active": true, "iss": ISSUER, "sub": "user-1", "aud": AUDIENCE,
        "exp": now_secs() + 600, "scope": "orders.read", "client_id": "web"});
    for (k, v) in extra.as_object().expect("object") {
        claims[k] = v.clone();
    }
    claims
}

/// Behaviour chosen by the token itself, so one server serves every case.
async fn introspect(
    State(idp): State<Arc<Idp>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    idp.calls.fetch_add(1, Ordering::SeqCst);
    let expected = crate::introspect::basic_credentials_for_test(CLIENT, SECRET);
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(expected.as_str())
        || (form.get("client_id").map(String::as_str) == Some(CLIENT)
            && form.get("client_secret").map(String::as_str) == Some(SECRET));
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let token = form.get("token").cloned().unwrap_or_default();
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let kind = token.split('-').next().unwrap_or("");
    if kind == "flap" {
        return match idp.flaps.fetch_add(1, Ordering::SeqCst) % 5 {
            0 => StatusCode::SERVICE_UNAVAILABLE.into_response(),
            1 => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                answer(active(json!({})))
            }
            2 => (StatusCode::OK, "{\"active\": tru").into_response(),
            3 => StatusCode::BAD_GATEWAY.into_response(),
            _ => {
                if let Ok(mut positives) = idp.positives.lock() {
                    positives.insert(token.clone());
                }
                answer(active(json!({})))
            }
        };
    }
    match kind {
        "active" => answer(active(json!({}))),
        "otheraud" => answer(active(json!({"aud": "api://billing"}))),
        // RFC 7662 makes aud and exp optional; oidc-provider omits aud without a resource.
        "noaud" => answer(without(active(json!({})), "aud")),
        "noexp" => answer(without(active(json!({})), "exp")),
        "otheriss" => answer(active(json!({"iss": "https://evil.example/"}))),
        "shortlived" => answer(active(json!({"exp": now_secs() + 1}))),
        "nocache" => (
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(active(json!({}))),
        )
            .into_response(),
        "inactive" => answer(json!({"active": false})),
        "phantom" => answer(active(
            json!({"jwt": RSA.mint(&claims_with(json!({"sub": "user-1-from-jwt"}))).expect("mint")}),
        )),
        "badphantom" => answer(active(
            json!({"jwt": ROGUE.mint(&good_claims()).expect("mint")}),
        )),
        "unavailable" => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        "broken" => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        "missing" => StatusCode::NOT_FOUND.into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            answer(active(json!({})))
        }
        "garbage" => (StatusCode::OK, "<html>not json</html>").into_response(),
        "noactive" => answer(json!({"sub": "user-1"})),
        "stringactive" => answer(json!({"active": "true"})),
        "huge" => answer(json!({"active": true, "pad": "x".repeat(2 * 1024 * 1024)})),
        // application/jwt (Curity): the body is the JWT; 204 is inactive.
        "jwtmode" if accept == "application/jwt" => (
            [(header::CONTENT_TYPE, "application/jwt")],
            RSA.mint(&good_claims()).expect("mint"),
        )
            .into_response(),
        "gone" if accept == "application/jwt" => StatusCode::NO_CONTENT.into_response(),
        // RFC 9701 signed answers.
        "signed" | "wrongaud" if accept == "application/token-introspection+jwt" => {
            let aud = if kind == "signed" {
                CLIENT
            } else {
                "someone-else"
            };
            let inner = active(json!({}));
            let body = RSA
                .mint_with_header(
                    &json!({"alg": "RS256", "kid": RSA.kid, "typ": "token-introspection+jwt"}),
                    &json!({"iss": ISSUER, "aud": aud, "iat": now_secs(), "token_introspection": inner}),
                )
                .expect("mint");
            (
                [(header::CONTENT_TYPE, "application/token-introspection+jwt")],
                body,
            )
                .into_response()
        }
        _ if token.contains('.') => {
            // A JWT under `when: always`: revoked when its sub says so.
            let payload = token.split('.').nth(1).unwrap_or("");
            let claims: Value = base64::Engine::decode(&crate::jose::B64, payload)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or_default();
            answer(if claims["sub"] == "revoked" {
                json!({"active": false})
            } else {
                active(json!({}))
            })
        }
        _ => answer(json!({"active": false})),
    }
}

async fn userinfo(State(idp): State<Arc<Idp>>, headers: HeaderMap) -> Response {
    idp.calls.fetch_add(1, Ordering::SeqCst);
    match headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        // What a real OpenID provider answers (oidc-provider 9, scope openid email): the
        // user's claims, no aud, no exp, no iss.
        Some("Bearer known") => {
            answer(json!({"sub": "user-1", "email": "user-1@example.com", "email_verified": true}))
        }
        Some("Bearer noscope") => (
            StatusCode::FORBIDDEN,
            [(
                header::WWW_AUTHENTICATE,
                "Bearer error=\"insufficient_scope\"",
            )],
        )
            .into_response(),
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
        )
            .into_response(),
    }
}

async fn start() -> (String, Arc<Idp>) {
    let idp = Arc::new(Idp {
        calls: AtomicU64::new(0),
        flaps: AtomicU64::new(0),
        positives: std::sync::Mutex::new(std::collections::HashSet::new()),
    });
    let app = Router::new()
        .route("/introspect", post(introspect))
        .route("/userinfo", get(userinfo))
        .with_state(idp.clone());
    let addr = crate::fixtures::serve(app).await;
    (format!("http://{addr}"), idp)
}

struct Setup {
    snapshot: Snapshot,
    idp: Arc<Idp>,
    _dir: tempfile::TempDir,
}

async fn setup(introspection: Value) -> Setup {
    let (base, idp) = start().await;
    let dir = tempfile::tempdir().expect("dir");
    let secret = dir.path().join("client-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).expect("write");
    let mut block = json!({"endpoint": format!("{base}/introspect"), "clientId": CLIENT,
        "clientSecretRef": {"file": secret.display().to_string()}, "allowInsecureHttp": true});
    for (k, v) in introspection.as_object().expect("object") {
        block[k] = v.clone();
    }
    if block["endpoint"] == "userinfo" {
        block["endpoint"] = json!(format!("{base}/userinfo"));
    }
    let extra = json!({"introspection": block, "forward": {"claimsToHeaders": [{"claim": "sub", "header": "x-user-id"}]}});
    let policy = mk_policy("opaque", &extra.to_string());
    Setup {
        snapshot: Snapshot::build(vec![policy], DefaultAction::Deny).0,
        idp,
        _dir: dir,
    }
}

impl Setup {
    async fn check(&self, token: &str) -> Decision {
        let headers = vec![("authorization".to_string(), format!("Bearer {token}"))];
        let request = Request {
            host: "api.example.com",
            path: "/",
            method: "GET",
            headers: Headers::List(&headers),
            policy: None,
            route: None,
            source: Default::default(),
        };
        engine::check(&self.snapshot, &request, SystemTime::now()).await
    }

    fn calls(&self) -> u64 {
        self.idp.calls.load(Ordering::SeqCst)
    }
}

fn outcome(decision: &Decision) -> (u16, Reason) {
    match decision {
        Decision::Allow(a) => (200, a.reason),
        Decision::Deny(d) => (d.status, d.reason),
    }
}

fn set_header<'a>(decision: &'a Decision, name: &str) -> Option<&'a str> {
    match decision {
        Decision::Allow(a) => a
            .headers_to_set
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str()),
        Decision::Deny(_) => None,
    }
}

#[tokio::test]
async fn an_active_opaque_token_is_allowed_and_cached() {
    let s = setup(json!({})).await;
    let decision = s.check("active-1").await;
    assert_eq!(outcome(&decision), (200, Reason::Valid));
    assert_eq!(set_header(&decision, "x-user-id"), Some("user-1"));
    assert_eq!(
        set_header(&decision, "authorization"),
        None,
        "no phantom token unless asked for"
    );
    assert_eq!(s.calls(), 1);
    assert_eq!(outcome(&s.check("active-1").await), (200, Reason::Valid));
    assert_eq!(s.calls(), 1, "a cached token causes no introspection");
    // client_secret_post works too.
    let post = setup(json!({"authMethod": "client_secret_post"})).await;
    assert_eq!(outcome(&post.check("active-2").await), (200, Reason::Valid));
}

#[tokio::test]
async fn a_thousand_concurrent_requests_for_one_new_token_cause_one_introspection() {
    let s = Arc::new(setup(json!({})).await);
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { outcome(&s.check("active-burst").await) })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("task"), (200, Reason::Valid));
    }
    assert_eq!(s.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_introspection_endpoint_never_yields_an_allow_without_a_positive_answer() {
    // Each call is, in turn: 503, too slow, truncated JSON, 502, active.
    let s = Arc::new(setup(json!({"timeout": "200ms", "cache": {"defaultTtl": "1h"}})).await);
    let tokens: Vec<String> = (0..8).map(|i| format!("flap-{i}")).collect();
    let mut requests = 0u64;
    let mut allowed = std::collections::HashSet::new();
    for _round in 0..12 {
        let tasks: Vec<_> = tokens
            .iter()
            .map(|token| {
                let (s, token) = (s.clone(), token.clone());
                tokio::spawn(async move {
                    let decision = s.check(&token).await;
                    (token, outcome(&decision))
                })
            })
            .collect();
        for task in tasks {
            let (token, (status, reason)) = task.await.expect("task");
            requests += 1;
            if status == 200 {
                assert_eq!(reason, Reason::Valid);
                let positive = s
                    .idp
                    .positives
                    .lock()
                    .map(|p| p.contains(&token))
                    .unwrap_or(false);
                assert!(positive, "{token} allowed without a positive answer");
                allowed.insert(token);
            } else {
                assert!(
                    matches!(
                        reason,
                        Reason::IntrospectionUnavailable
                            | Reason::IntrospectionTimeout
                            | Reason::IntrospectionInvalid
                            | Reason::IntrospectionFailed
                    ),
                    "{token}: {status} {reason:?}"
                );
                assert!(
                    status >= 500,
                    "an IdP failure is not the client's fault: {status}"
                );
            }
        }
    }
    // Positive answers are cached, so the IdP's load falls as tokens get through: once a token
    // is allowed it is never asked about again.
    let positives = s.idp.positives.lock().map(|p| p.len()).unwrap_or(0);
    assert_eq!(allowed.len(), positives, "every positive answer was used");
    assert!(
        positives >= 4,
        "only {positives} positive answers in {requests} requests"
    );
    assert!(
        s.calls() < requests,
        "{} introspection calls for {requests} requests",
        s.calls()
    );
    let calls = s.calls();
    for token in &allowed {
        assert_eq!(outcome(&s.check(token).await), (200, Reason::Valid));
    }
    assert_eq!(s.calls(), calls, "cached positives cause no calls");
}

#[tokio::test]
async fn inactive_answers_are_cached_briefly() {
    let s = setup(json!({"cache": {"negativeTtl": "300ms"}})).await;
    assert_eq!(
        outcome(&s.check("inactive-1").await),
        (401, Reason::TokenInactive)
    );
    assert_eq!(
        outcome(&s.check("inactive-1").await),
        (401, Reason::TokenInactive)
    );
    assert_eq!(s.calls(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.check("inactive-1").await;
    assert_eq!(s.calls(), 2, "asked again after negativeTtl");
}

#[tokio::test]
async fn idp_failures_never_allow_and_map_to_their_status() {
    let s = setup(json!({"timeout": "300ms"})).await;
    let cases = [
        ("unavailable-1", 503, Reason::IntrospectionUnavailable),
        ("slow-1", 503, Reason::IntrospectionTimeout),
        ("broken-1", 502, Reason::IntrospectionFailed),
        ("missing-1", 502, Reason::IntrospectionFailed),
        ("garbage-1", 500, Reason::IntrospectionInvalid),
        ("noactive-1", 500, Reason::IntrospectionInvalid),
        ("stringactive-1", 500, Reason::IntrospectionInvalid),
        ("huge-1", 500, Reason::IntrospectionInvalid),
        ("otheraud-1", 401, Reason::AudienceMismatch),
        ("otheriss-1", 401, Reason::IssuerNotAllowed),
    ];
    for (token, status, reason) in cases {
        assert_eq!(outcome(&s.check(token).await), (status, reason), "{token}");
    }
    // Failures are not cached: each request asks again.
    let before = s.calls();
    s.check("unavailable-1").await;
    assert_eq!(s.calls(), before + 1);
}

#[tokio::test]
async fn a_wrong_client_secret_is_a_502_with_a_hint() {
    let (base, _idp) = start().await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("secret"), "wrong").expect("write");
    let extra = json!({"introspection": {"endpoint": format!("{base}/introspect"), "clientId": CLIENT,
        "clientSecretRef": {"file": dir.path().join("secret").display().to_string()}, "allowInsecureHttp": true}});
    let snapshot = Snapshot::build(
        vec![mk_policy("p", &extra.to_string())],
        DefaultAction::Deny,
    )
    .0;
    let headers = vec![("authorization".to_string(), "Bearer active-1".to_string())];
    let request = Request {
        host: "h",
        path: "/",
        method: "GET",
        headers: Headers::List(&headers),
        route: None,
        source: Default::default(),
        policy: None,
    };
    let Decision::Deny(deny) = engine::check(&snapshot, &request, SystemTime::now()).await else {
        panic!("denied")
    };
    assert_eq!(
        (deny.status, deny.reason),
        (502, Reason::IntrospectionFailed)
    );
    assert!(
        deny.description.contains("HTTP 401")
            && deny.description.contains("clientId and the client secret"),
        "{}",
        deny.description
    );
}

#[tokio::test]
async fn ttls_follow_cache_control_and_the_token_expiry() {
    let s = setup(json!({})).await;
    s.check("nocache-1").await;
    s.check("nocache-1").await;
    assert_eq!(s.calls(), 2, "Cache-Control: no-store is honoured");
    s.check("shortlived-1").await;
    s.check("shortlived-1").await;
    assert_eq!(s.calls(), 3);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.check("shortlived-1").await;
    assert_eq!(
        s.calls(),
        4,
        "the answer was cached only until the token's exp"
    );
}

#[tokio::test]
async fn the_phantom_token_replaces_the_opaque_one_after_verification() {
    let s = setup(json!({"phantomToken": true})).await;
    let decision = s.check("phantom-1").await;
    assert_eq!(outcome(&decision), (200, Reason::Valid));
    let forwarded = set_header(&decision, "authorization").expect("phantom JWT forwarded");
    assert!(forwarded.starts_with("Bearer ey"), "{forwarded}");
    assert_eq!(
        set_header(&decision, "x-user-id"),
        Some("user-1-from-jwt"),
        "claims come from the verified JWT"
    );
    assert_eq!(
        outcome(&s.check("badphantom-1").await),
        (500, Reason::IntrospectionInvalid),
        "a JWT that does not verify is never forwarded"
    );
    assert_eq!(
        outcome(&s.check("active-1").await),
        (500, Reason::IntrospectionInvalid),
        "phantomToken needs a jwt in the answer"
    );
}

#[tokio::test]
async fn application_jwt_answers() {
    let s = setup(json!({"response": "jwt", "phantomToken": true})).await;
    let decision = s.check("jwtmode-1").await;
    assert_eq!(outcome(&decision), (200, Reason::Valid));
    assert!(set_header(&decision, "authorization").is_some_and(|v| v.starts_with("Bearer ey")));
    assert_eq!(
        outcome(&s.check("gone-1").await),
        (401, Reason::TokenInactive),
        "204 is inactive"
    );
}

#[tokio::test]
async fn signed_introspection_answers_rfc_9701() {
    let s = setup(json!({"response": "token-introspection+jwt"})).await;
    assert_eq!(outcome(&s.check("signed-1").await), (200, Reason::Valid));
    let (status, reason) = outcome(&s.check("wrongaud-1").await);
    assert_eq!((status, reason), (500, Reason::IntrospectionInvalid));
}

#[tokio::test]
async fn userinfo_mode() {
    // A userinfo answer proves the token is active for its user, nothing about audience or
    // expiry: the policy says so explicitly, and then a real answer is accepted.
    let s = setup(
        json!({"response": "userinfo", "endpoint": "userinfo", "acceptWithout": ["aud", "exp"]}),
    )
    .await;
    assert_eq!(outcome(&s.check("known").await), (200, Reason::Valid));
    assert_eq!(
        outcome(&s.check("unknown").await),
        (401, Reason::TokenInactive)
    );
    assert_eq!(
        outcome(&s.check("noscope").await),
        (401, Reason::TokenInactive)
    );
    // Without saying so, the policy does not compile (never a silent pass, never a policy that
    // denies every real answer).
    for accept in [json!([]), json!(["aud"]), json!(["exp"])] {
        let extra =
            json!({"introspection": {"endpoint": "https://idp/userinfo", "response": "userinfo",
            "clientId": CLIENT, "clientSecretRef": {"file": "/dev/null"}, "acceptWithout": accept}})
            .to_string();
        let err = try_compile("p", &spec_with(&extra)).expect_err(&extra);
        assert!(
            err.problems
                .iter()
                .any(|p| p.field == "spec.introspection.acceptWithout"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn answers_without_aud_or_exp_pass_only_when_the_policy_says_so() {
    let strict = setup(json!({})).await;
    assert_eq!(
        outcome(&strict.check("noaud-1").await),
        (401, Reason::AudienceMismatch)
    );
    assert_eq!(
        outcome(&strict.check("noexp-1").await),
        (401, Reason::ExpirationMissing)
    );
    let lenient = setup(json!({"acceptWithout": ["aud", "exp"]})).await;
    assert_eq!(
        outcome(&lenient.check("noaud-1").await),
        (200, Reason::Valid)
    );
    assert_eq!(
        outcome(&lenient.check("noexp-1").await),
        (200, Reason::Valid)
    );
    // A claim that is there is checked all the same.
    assert_eq!(
        outcome(&lenient.check("otheraud-1").await),
        (401, Reason::AudienceMismatch)
    );
}

#[tokio::test]
async fn jwts_are_validated_and_also_introspected_with_when_always() {
    let s = setup(json!({"when": "always"})).await;
    let jwt = RSA.mint(&good_claims()).expect("mint");
    assert_eq!(outcome(&s.check(&jwt).await), (200, Reason::Valid));
    assert_eq!(s.calls(), 1, "the JWT was introspected too");
    let rogue = ROGUE.mint(&good_claims()).expect("mint");
    assert_eq!(
        outcome(&s.check(&rogue).await),
        (401, Reason::SignatureInvalid),
        "the signature still counts"
    );
    assert_eq!(
        s.calls(),
        1,
        "a bad JWT is refused before any introspection"
    );
    let revoked = RSA
        .mint(&claims_with(json!({"sub": "revoked"})))
        .expect("mint");
    assert_eq!(
        outcome(&s.check(&revoked).await),
        (401, Reason::TokenInactive),
        "a valid but revoked JWT"
    );
    let opaque_only = setup(json!({})).await;
    assert_eq!(
        outcome(&opaque_only.check(&jwt).await),
        (200, Reason::Valid)
    );
    assert_eq!(
        opaque_only.calls(),
        0,
        "when: opaque leaves JWTs to the keys"
    );
}

#[test]
fn compile_refuses_incomplete_introspection() {
    let cases = [
        (
            json!({"endpoint": "https://idp/introspect"}),
            "spec.introspection.clientId",
        ),
        (
            json!({"endpoint": "https://idp/introspect", "clientId": "g"}),
            "spec.introspection.clientSecretRef",
        ),
        (
            json!({"endpoint": "http://idp/introspect", "clientId": "g", "clientSecretRef": {"file": "/x"}}),
            "spec.introspection.endpoint",
        ),
        (
            json!({"endpoint": "https://idp/i", "clientId": "g", "clientSecretRef": {"name": "a"}}),
            "spec.introspection.clientSecretRef",
        ),
        (
            json!({"endpoint": "https://idp/i", "response": "userinfo", "phantomToken": true}),
            "spec.introspection.phantomToken",
        ),
        (
            json!({"endpoint": "https://idp/i", "response": "userinfo", "timeout": "1m"}),
            "spec.introspection.timeout",
        ),
        (
            json!({"clientId": "g", "clientSecretRef": {"file": "/nonexistent"}, "endpoint": "https://idp/i"}),
            "spec.introspection.clientSecretRef",
        ),
    ];
    for (block, field) in cases {
        let extra = json!({"introspection": block}).to_string();
        let err = try_compile("p", &spec_with(&extra)).expect_err(&extra);
        assert!(
            err.problems.iter().any(|p| p.field == field),
            "{field} in {err}"
        );
    }
    // Inline keys cannot tell where discovery is: the endpoint is required.
    let err = try_compile(
        "p",
        &spec_with(r#"{"introspection": {"response": "userinfo"}}"#),
    )
    .expect_err("no endpoint");
    assert!(
        err.to_string().contains("does not use OpenID discovery"),
        "{err}"
    );
}

#[test]
fn basic_credentials_are_form_encoded_first() {
    // RFC 6749 §2.3.1: form-urlencode id and secret, then base64 "id:secret".
    let header = crate::introspect::basic_credentials_for_test("a b", "p:w&d");
    let decoded = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        header.trim_start_matches("Basic "),
    )
    .expect("b64");
    assert_eq!(String::from_utf8(decoded).expect("utf8"), "a+b:p%3Aw%26d");
    let _ = SigningKey::hmac("unused", "HS256", b"");
}

/// The metrics of a policy's introspection: calls by outcome (each answer shape and failure),
/// cache lookups, durations; counted on across a recompile of the policy, gone with it.
#[tokio::test]
async fn calls_and_cache_lookups_are_counted_per_policy_across_recompiles() {
    let (base, _idp) = start().await;
    let dir = tempfile::tempdir().expect("dir");
    let secret = dir.path().join("client-secret");
    std::fs::write(&secret, SECRET).expect("write");
    let extra = json!({"introspection": {"endpoint": format!("{base}/introspect"), "clientId": CLIENT,
        "clientSecretRef": {"file": secret.display().to_string()}, "allowInsecureHttp": true}});
    let sources = crate::jwks::KeySources::offline().expect("client");
    let compile = || {
        Arc::new(
            compile_with(&sources, "shop", "opaque", &spec_with(&extra.to_string()))
                .expect("policy compiles"),
        )
    };
    let check = async |snapshot: &Snapshot, token: &str| {
        let headers = vec![("authorization".to_string(), format!("Bearer {token}"))];
        let request = Request {
            host: "api.example.com",
            path: "/",
            method: "GET",
            headers: Headers::List(&headers),
            policy: None,
            route: None,
            source: Default::default(),
        };
        outcome(&engine::check(snapshot, &request, SystemTime::now()).await).1
    };
    let metrics = crate::metrics::Metrics::new(Some(sources.clone()), None);
    let series = |prefix: &str| {
        let text = metrics.encode();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect();
        lines.sort_unstable();
        lines
    };

    let first = Snapshot::build(vec![compile()], DefaultAction::Deny).0;
    for (token, reason) in [
        ("active-1", Reason::Valid),
        ("active-1", Reason::Valid),
        ("inactive-1", Reason::TokenInactive),
        ("unavailable-1", Reason::IntrospectionUnavailable),
        ("broken-1", Reason::IntrospectionFailed),
        ("garbage-1", Reason::IntrospectionInvalid),
    ] {
        assert_eq!(check(&first, token).await, reason, "{token}");
    }
    let requests = |active: u32| {
        [
            format!("tollgate_introspection_requests_total{{policy=\"shop/opaque\",outcome=\"active\"}} {active}"),
            "tollgate_introspection_requests_total{policy=\"shop/opaque\",outcome=\"failed\"} 1".to_string(),
            "tollgate_introspection_requests_total{policy=\"shop/opaque\",outcome=\"inactive\"} 1".to_string(),
            "tollgate_introspection_requests_total{policy=\"shop/opaque\",outcome=\"invalid\"} 1".to_string(),
            "tollgate_introspection_requests_total{policy=\"shop/opaque\",outcome=\"timeout\"} 0".to_string(),
            "tollgate_introspection_requests_total{policy=\"shop/opaque\",outcome=\"unavailable\"} 1".to_string(),
        ]
    };
    assert_eq!(series("tollgate_introspection_requests_total"), requests(1));
    assert_eq!(
        series("tollgate_introspection_cache_lookups_total"),
        [
            "tollgate_introspection_cache_lookups_total{policy=\"shop/opaque\",result=\"hit\"} 1",
            "tollgate_introspection_cache_lookups_total{policy=\"shop/opaque\",result=\"miss\"} 5",
        ]
    );
    assert_eq!(
        series("tollgate_introspection_duration_seconds_count"),
        ["tollgate_introspection_duration_seconds_count{policy=\"shop/opaque\"} 5"]
    );

    // A recompiled policy (a new introspector, an empty answer cache) counts on.
    let second = Snapshot::build(vec![compile()], DefaultAction::Deny).0;
    drop(first);
    assert_eq!(check(&second, "active-1").await, Reason::Valid);
    assert_eq!(series("tollgate_introspection_requests_total"), requests(2));

    // A policy no longer served has no series.
    drop(second);
    assert_eq!(series("tollgate_introspection_"), Vec::<String>::new());
}
