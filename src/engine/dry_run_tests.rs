//! `mode: dryRun`: every kind of denial becomes an allow that carries it, with the identity
//! headers removed unless the token passed; the same requests on an enforcing policy are
//! denied exactly as before.

use std::collections::HashMap;

use serde_json::json;

use super::*;
use crate::decision::Deny;
use crate::fixtures::*;
use crate::local_issuer::now_secs;
use crate::policy::DefaultAction;
use crate::verified::CacheLimits;

/// The orders policy of the engine tests: identity headers, a payload header, a rule, an
/// anonymous path, a policy-wide requirement, and the token removed on allow.
const ORDERS: &str = r#"{match: {hosts: [api.example.com], paths: [/orders]},
    requiredClaims: [{name: scp, separator: " ", values: [orders.read]}],
    rules: [{paths: [/orders/admin], requiredClaims: [{name: roles, values: [admin]}]},
            {paths: [/orders/healthz], allowAnonymous: true}],
    forward: {claimsToHeaders: [{claim: sub, header: x-user-id}], payloadHeader: x-jwt-payload,
              keepToken: false}}"#;

fn orders(mode: &str) -> Arc<Policy> {
    mk_policy(
        "orders",
        &ORDERS.replacen('{', &format!("{{mode: {mode}, "), 1),
    )
}

fn snapshot(policy: Arc<Policy>) -> Snapshot {
    Snapshot::build(vec![policy], DefaultAction::Deny).0
}

async fn decide(snapshot: &Snapshot, path: &str, headers: &[(&str, &str)]) -> Decision {
    decide_as(snapshot, "GET", path, headers).await
}

async fn decide_as(
    snapshot: &Snapshot,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Decision {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let request = Request {
        host: "api.example.com",
        path,
        method,
        headers: Headers::Map(&headers),
        policy: None,
        route: None,
        source: Default::default(),
    };
    check(snapshot, &request, SystemTime::now()).await
}

fn allowed(decision: &Decision) -> &Allow {
    match decision {
        Decision::Allow(a) => a,
        Decision::Deny(d) => panic!("expected allow, got {} {}", d.status, d.reason),
    }
}

fn denied(decision: &Decision) -> &Deny {
    match decision {
        Decision::Deny(d) => d,
        Decision::Allow(a) => panic!("expected a denial, got {a:?}"),
    }
}

fn bearer(claims: serde_json::Value) -> String {
    format!("Bearer {}", RSA.mint(&claims).expect("mint"))
}

/// (name, path, headers, status, reason).
type Case = (
    &'static str,
    &'static str,
    Vec<(&'static str, String)>,
    u16,
    Reason,
);

/// Every denial the policy's own checks produce.
fn denials() -> Vec<Case> {
    let now = now_secs();
    vec![
        ("missing", "/orders", vec![], 401, Reason::TokenMissing),
        (
            "malformed",
            "/orders",
            vec![("authorization", "Bearer not.a-jwt".into())],
            401,
            Reason::TokenMalformed,
        ),
        (
            "expired",
            "/orders",
            vec![(
                "authorization",
                bearer(claims_with(json!({"exp": now - 3600}))),
            )],
            401,
            Reason::TokenExpired,
        ),
        (
            "audience",
            "/orders",
            vec![(
                "authorization",
                bearer(claims_with(json!({"aud": "api://billing"}))),
            )],
            401,
            Reason::AudienceMismatch,
        ),
        (
            "issuer",
            "/orders",
            vec![(
                "authorization",
                bearer(claims_with(json!({"iss": "https://other.example.com/"}))),
            )],
            401,
            Reason::IssuerNotAllowed,
        ),
        (
            "signature",
            "/orders",
            vec![(
                "authorization",
                format!("Bearer {}", ROGUE.mint(&good_claims()).expect("mint")),
            )],
            401,
            Reason::SignatureInvalid,
        ),
        (
            "required claim",
            "/orders",
            vec![(
                "authorization",
                bearer(claims_with(json!({"scp": "billing.read"}))),
            )],
            401,
            Reason::ClaimMismatch,
        ),
        (
            "rule",
            "/orders/admin",
            vec![("authorization", bearer(good_claims()))],
            403,
            Reason::InsufficientScope,
        ),
    ]
}

#[tokio::test]
async fn every_denial_becomes_an_allow_that_records_it_and_enforce_is_unchanged() {
    let enforcing = snapshot(orders("enforce"));
    let trial = snapshot(orders("dryRun"));
    for (name, path, headers, status, reason) in denials() {
        let mut headers: Vec<(&str, &str)> =
            headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        // A client sends identity headers of its own; they must never pass.
        headers.push(("x-user-id", "forged"));
        headers.push(("x-jwt-payload", "forged"));

        let enforced = decide(&enforcing, path, &headers).await;
        let deny = denied(&enforced);
        assert_eq!((deny.status, deny.reason), (status, reason), "{name}");

        let decision = decide(&trial, path, &headers).await;
        let allow = allowed(&decision);
        assert_eq!(allow.reason, Reason::DryRun, "{name}");
        assert_eq!(allow.policy.as_deref(), Some("test/orders"), "{name}");
        assert_eq!(decision.reason(), Reason::DryRun, "{name}");
        let would = decision.would_deny().expect("the would-be denial");
        assert_eq!((would.status, would.reason), (status, reason), "{name}");
        assert_eq!(would.description, deny.description, "{name}");
        assert_eq!(
            would.body, deny.body,
            "{name}: the answer it would have given"
        );
        // The token never reaches the upstream (keepToken: false), whatever became of it.
        assert!(
            allow.headers_to_remove.iter().any(|h| h == "authorization"),
            "{name}: {:?}",
            allow.headers_to_remove
        );
        let set: Vec<&str> = allow
            .headers_to_set
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        if reason == Reason::InsufficientScope {
            // The token passed; only the rule is unmet: its verified identity goes upstream
            // as on any allow, replacing the forged values.
            assert!(
                allow
                    .headers_to_set
                    .contains(&("x-user-id".into(), "user-1".into())),
                "{name}: {:?}",
                allow.headers_to_set
            );
            assert!(set.contains(&"x-jwt-payload"), "{name}");
            assert_eq!(allow.issuer.as_deref(), Some(ISSUER), "{name}");
            assert!(allow.claims.is_some(), "{name}");
            assert!(would.hint.as_deref().is_some_and(|h| h.contains("roles")));
        } else {
            // No verified identity: the identity headers are removed, none is set.
            for header in ["x-user-id", "x-jwt-payload"] {
                assert!(
                    allow.headers_to_remove.iter().any(|h| h == header),
                    "{name}: {header} must be removed: {:?}",
                    allow.headers_to_remove
                );
                assert!(!set.contains(&header), "{name}: {header} set");
            }
            assert!(allow.claims.is_none() && allow.issuer.is_none(), "{name}");
        }
    }
}

#[tokio::test]
async fn what_passes_in_dry_run_passes_as_in_enforce() {
    let trial = snapshot(orders("dryRun"));
    let good = bearer(good_claims());
    let decision = decide(&trial, "/orders/1", &[("authorization", &good)]).await;
    let allow = allowed(&decision);
    assert_eq!(allow.reason, Reason::Valid);
    assert!(decision.would_deny().is_none());
    assert!(
        allow
            .headers_to_set
            .contains(&("x-user-id".into(), "user-1".into()))
    );
    // An anonymous rule is not a denial either: it answers as it does in enforce mode.
    let decision = decide(&trial, "/orders/healthz", &[("x-user-id", "forged")]).await;
    let allow = allowed(&decision);
    assert_eq!(allow.reason, Reason::Anonymous);
    assert!(decision.would_deny().is_none());
    assert!(allow.headers_to_remove.iter().any(|h| h == "x-user-id"));
    // What no policy judges is not the trial's to allow.
    let decision = decide(&trial, "/users", &[("authorization", &good)]).await;
    assert_eq!(denied(&decision).reason, Reason::NoPolicy);
}

#[tokio::test]
async fn the_token_stays_when_the_policy_keeps_it() {
    let trial = snapshot(mk_policy(
        "orders",
        "{mode: dryRun, match: {hosts: [api.example.com]}, forward: {claimsToHeaders: [{claim: sub, header: x-user-id}]}}",
    ));
    let expired = bearer(claims_with(json!({"exp": now_secs() - 3600})));
    let decision = decide(
        &trial,
        "/x?access_token=abc",
        &[("authorization", &expired), ("x-user-id", "forged")],
    )
    .await;
    let allow = allowed(&decision);
    assert_eq!(
        decision.would_deny().map(|d| d.reason),
        Some(Reason::TokenExpired)
    );
    assert_eq!(allow.headers_to_remove, ["x-user-id"]);
    assert!(allow.headers_to_set.is_empty());
    assert!(allow.query_params_to_remove.is_empty());
}

#[tokio::test]
async fn issuer_trouble_is_allowed_and_recorded() {
    // Keys that can never be fetched (offline): enforce answers 503, a trial lets it through.
    let spec = |mode: &str| {
        spec(&format!(
            r#"{{mode: {mode}, match: {{hosts: [api.example.com]}},
                issuers: [{{issuer: "https://idp.example.com/", audiences: ["api://orders"]}}],
                forward: {{claimsToHeaders: [{{claim: sub, header: x-user-id}}]}}}}"#
        ))
    };
    let token = bearer(good_claims());
    let headers = [("authorization", token.as_str())];
    let enforcing = snapshot(Arc::new(
        try_compile("remote", &spec("enforce")).expect("compiles"),
    ));
    let deny_decision = decide(&enforcing, "/", &headers).await;
    let deny = denied(&deny_decision);
    assert_eq!((deny.status, deny.reason), (503, Reason::IssuerUnavailable));
    let trial = snapshot(Arc::new(
        try_compile("remote", &spec("dryRun")).expect("compiles"),
    ));
    let decision = decide(&trial, "/", &headers).await;
    let allow = allowed(&decision);
    let would = decision.would_deny().expect("would deny");
    assert_eq!(
        (would.status, would.reason),
        (503, Reason::IssuerUnavailable)
    );
    assert_eq!(allow.headers_to_remove, ["x-user-id"]);
}

#[tokio::test]
async fn a_method_override_is_judged_as_both_methods_in_dry_run_too() {
    let trial = snapshot(mk_policy(
        "orders",
        "{mode: dryRun, match: {hosts: [api.example.com]}, rules: [{paths: [/], methods: [DELETE], requiredClaims: [{name: roles, values: [admin]}]}]}",
    ));
    let good = bearer(good_claims());
    // Allowed as GET, would be denied as the DELETE it asks for.
    let decision = decide_as(
        &trial,
        "GET",
        "/orders/1",
        &[
            ("authorization", &good),
            ("x-http-method-override", "DELETE"),
        ],
    )
    .await;
    assert_eq!(
        decision.would_deny().map(|d| d.reason),
        Some(Reason::InsufficientScope)
    );
    // Would be denied as sent: that is the answer, not the override's.
    let expired = bearer(claims_with(json!({"exp": now_secs() - 3600})));
    let decision = decide_as(
        &trial,
        "GET",
        "/orders/1",
        &[
            ("authorization", &expired),
            ("x-http-method-override", "DELETE"),
        ],
    )
    .await;
    assert_eq!(
        decision.would_deny().map(|d| d.reason),
        Some(Reason::TokenExpired)
    );
}

#[tokio::test]
async fn the_verified_token_cache_serves_dry_run_policies() {
    let mut trial = snapshot(orders("dryRun"));
    let cache = crate::verified::TokenCache::new(CacheLimits::default()).expect("cache");
    trial.token_cache = Some(cache.clone());
    let good = bearer(good_claims());
    for path in ["/orders/1", "/orders/2", "/orders/admin"] {
        let decision = decide(&trial, path, &[("authorization", &good)]).await;
        let allow = allowed(&decision);
        assert!(
            allow
                .headers_to_set
                .contains(&("x-user-id".into(), "user-1".into())),
            "{path}: the cached verification fills the identity headers"
        );
        let expected = (path == "/orders/admin").then_some(Reason::InsufficientScope);
        assert_eq!(decision.would_deny().map(|d| d.reason), expected, "{path}");
    }
    let stats = cache.stats();
    assert_eq!((stats.inserts, stats.hits), (1, 2), "{stats:?}");
    // A failed token is never cached: each one is judged again, and recorded again.
    let expired = bearer(claims_with(json!({"exp": now_secs() - 3600})));
    for _ in 0..2 {
        let decision = decide(&trial, "/orders/1", &[("authorization", &expired)]).await;
        assert_eq!(
            decision.would_deny().map(|d| d.reason),
            Some(Reason::TokenExpired)
        );
    }
    assert_eq!(cache.stats().inserts, 1);
}

#[tokio::test]
async fn the_trace_says_what_it_would_have_done() {
    let trial = snapshot(orders("dryRun"));
    let headers: HashMap<String, String> = HashMap::new();
    let request = Request {
        host: "api.example.com",
        path: "/orders",
        method: "GET",
        headers: Headers::Map(&headers),
        policy: None,
        route: None,
        source: Default::default(),
    };
    let decision = check_traced(&trial, &request, SystemTime::now(), Trace::on()).await;
    let steps = &decision.trace().expect("trace").steps;
    let mode = steps.last().expect("a step");
    assert_eq!(mode.check, "mode");
    assert!(
        mode.detail
            .starts_with("dry run: would deny with token_missing (401)"),
        "{}",
        mode.detail
    );
    assert!(steps.iter().any(|s| s.reason == Some("token_missing")));
}
