//! CEL conditions and computed headers through the engine.

use super::*;

const TENANTS: &str = r#"{match: {hosts: [api.example.com], paths: [/orders]},
    when: [{expression: "request.headers['x-tenant'] in claims.tenants", message: "x-tenant is not one of the token's tenants"}],
    rules: [
      {paths: [/orders/admin], when: [{expression: "'admin' in claims.roles || 'orders.admin' in claims.scp.split(' ')"}]},
      {paths: [/orders/v2], when: [{expression: "int(request.headers['x-api-version']) >= 2", message: "send x-api-version: 2", status: 400}],
       requiredClaims: [{name: scp, separator: " ", values: [orders.read]}]}],
    forward: {headers: [
      {name: x-tenant-user, expression: "request.headers['x-tenant'] + '/' + claims.sub"},
      {name: x-org, expression: "claims.org"}]}}"#;

fn tenant_token(claims: serde_json::Value) -> String {
    RSA.mint(&claims_with(claims)).expect("mint")
}

#[tokio::test]
async fn conditions_allow_and_deny_with_their_message_and_status() {
    let s = snapshot(&[mk_policy("orders", TENANTS)], DefaultAction::Deny);
    let token = tenant_token(json!({"tenants": ["acme", "globex"]}));
    // The tenant header names one of the token's tenants: allowed, headers computed.
    let ok = decide(
        &s,
        &req("/orders/1").bearer(&token).header("x-tenant", "acme"),
    )
    .await;
    let allow = allowed(&ok);
    assert!(
        allow
            .headers_to_set
            .contains(&("x-tenant-user".into(), "acme/user-1".into()))
    );
    // No org claim: the header is removed, never left as the client sent it.
    assert!(allow.headers_to_remove.contains(&"x-org".to_string()));
    assert!(!allow.headers_to_set.iter().any(|(k, _)| k == "x-org"));

    // Another tenant: 403 condition_failed with the condition's message.
    let other = decide(
        &s,
        &req("/orders/1")
            .bearer(&token)
            .header("x-tenant", "initech"),
    )
    .await;
    let deny = denied(&other);
    assert_eq!((deny.status, deny.reason), (403, Reason::ConditionFailed));
    assert!(
        deny.body
            .contains("condition_failed: x-tenant is not one of the token's tenants"),
        "{}",
        deny.body
    );
    assert!(
        deny.description.contains("spec.when[0]"),
        "{}",
        deny.description
    );
    let challenge = deny.www_authenticate.as_deref().expect("a challenge");
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );

    // No tenant header at all: the expression fails, which denies (never allows).
    let missing = decide(&s, &req("/orders/1").bearer(&token)).await;
    assert_eq!(denied(&missing).reason, Reason::ConditionFailed);

    // Rule conditions after the policy's: roles OR scope.
    let admin = tenant_token(json!({"tenants": ["acme"], "roles": ["admin"]}));
    let scoped = tenant_token(json!({"tenants": ["acme"], "scp": "orders.read orders.admin"}));
    for t in [&admin, &scoped] {
        let d = decide(
            &s,
            &req("/orders/admin/1").bearer(t).header("x-tenant", "acme"),
        )
        .await;
        allowed(&d);
    }
    let plain = decide(
        &s,
        &req("/orders/admin/1")
            .bearer(&token)
            .header("x-tenant", "acme"),
    )
    .await;
    assert_eq!(denied(&plain).reason, Reason::ConditionFailed);

    // A condition's own status.
    let v1 = decide(
        &s,
        &req("/orders/v2/1")
            .bearer(&token)
            .header("x-tenant", "acme")
            .header("x-api-version", "1"),
    )
    .await;
    assert_eq!(
        (denied(&v1).status, denied(&v1).reason),
        (400, Reason::ConditionFailed)
    );
    let v2 = decide(
        &s,
        &req("/orders/v2/1")
            .bearer(&token)
            .header("x-tenant", "acme")
            .header("x-api-version", "2"),
    )
    .await;
    allowed(&v2);
}

#[tokio::test]
async fn anonymous_rules_meet_conditions_without_claims() {
    let s = snapshot(&[mk_policy("orders", TENANTS_ANON)], DefaultAction::Deny);
    let get = decide(
        &s,
        &req("/orders/healthz").header("x-tenant-user", "spoofed"),
    )
    .await;
    let allow = allowed(&get);
    assert_eq!(allow.reason, Reason::Anonymous);
    // A computed header that reads claims cannot be computed: removed.
    assert!(
        allow
            .headers_to_remove
            .contains(&"x-tenant-user".to_string())
    );
    let post = decide(&s, &req("/orders/healthz").method("POST")).await;
    assert_eq!(denied(&post).reason, Reason::ConditionFailed);
}

/// TENANTS without the policy-wide condition on claims, which anonymous rules refuse.
const TENANTS_ANON: &str = r#"{match: {hosts: [api.example.com], paths: [/orders]},
    rules: [{paths: [/orders/healthz], allowAnonymous: true, when: [{expression: "request.method == 'GET'"}]}],
    forward: {headers: [{name: x-tenant-user, expression: "claims.sub"}]}}"#;

#[test]
fn policies_with_expressions_that_cannot_work_do_not_compile() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{when: [{expression: "claims.sub == 1 +"}]}"#,
            "spec.when[0].expression: does not parse",
        ),
        (
            r#"{rules: [{paths: [/a], when: [{expression: "request.methd == 'GET'"}]}]}"#,
            "spec.rules[0].when[0].expression: request has no field",
        ),
        (
            r#"{forward: {headers: [{name: x-a, expression: "request.method == 'GET'"}]}}"#,
            "spec.forward.headers[0].expression: is a bool, not a string",
        ),
        (
            r#"{forward: {headers: [{name: authorization, expression: "claims.sub"}]}}"#,
            "spec.forward.headers[0].name: authorization is where the token is read",
        ),
        (
            r#"{forward: {claimsToHeaders: [{claim: sub, header: x-a}], headers: [{name: X-A, expression: "claims.sub"}]}}"#,
            "spec.forward.headers[0].name: X-A is set twice",
        ),
        (
            r#"{when: [{expression: "claims.sub == 'x'"}], rules: [{paths: [/h], allowAnonymous: true}]}"#,
            "spec.when[0].expression: reads claims, but this policy has allowAnonymous rules",
        ),
        (
            r#"{rules: [{paths: [/h], allowAnonymous: true, when: [{expression: "has(claims.sub)"}]}]}"#,
            "spec.rules[0].when[0].expression: reads claims",
        ),
        (
            r#"{when: [{expression: "true", status: 302}]}"#,
            "spec.when[0].status: 302 is not a 4xx status",
        ),
        (
            r#"{rules: [{paths: [/a]}]}"#,
            "a rule needs requiredClaims, when, or allowAnonymous: true",
        ),
    ];
    for (extra, want) in cases {
        let error = crate::fixtures::try_compile("p", &crate::fixtures::spec_with(extra))
            .expect_err(extra)
            .to_string();
        assert!(error.contains(want), "{extra}: {error}");
    }
}

#[tokio::test]
async fn cached_tokens_meet_conditions_on_every_request() {
    // The verified-token cache keeps the claims; conditions read the request each time.
    let mut s = Snapshot::build(vec![mk_policy("orders", TENANTS)], DefaultAction::Deny).0;
    s.token_cache = crate::verified::TokenCache::new(crate::verified::CacheLimits::default());
    assert!(s.token_cache.is_some());
    let token = tenant_token(json!({"tenants": ["acme"]}));
    for (tenant, pass) in [("acme", true), ("globex", false), ("acme", true)] {
        let d = decide(
            &s,
            &req("/orders/1").bearer(&token).header("x-tenant", tenant),
        )
        .await;
        assert_eq!(d.is_allow(), pass, "{tenant}");
    }
}
