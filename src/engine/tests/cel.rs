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
    // The last two were judged from the cache entry, with the claims the condition reads
    // kept parsed in it.
    let stats = s.token_cache.as_ref().expect("cache").stats();
    assert_eq!((stats.misses, stats.hits), (1, 2), "{stats:?}");
}

/// Partner requests: a token, and a client certificate with a DNS name under
/// partners.example; the certificate's fingerprint travels to the upstream. Its health
/// rule takes no token but still wants the certificate.
const PARTNERS: &str = r#"{match: {hosts: [api.example.com], paths: [/partners]},
    when: [{expression: "source.certificate.dnsNames.exists(n, n.endsWith('.partners.example'))", message: "a partner certificate is required"}],
    rules: [{paths: [/partners/healthz], allowAnonymous: true, when: [{expression: "has(source.certificate)"}]}],
    forward: {headers: [{name: x-client-cert-sha256, expression: "source.certificate.fingerprint"}]}}"#;

#[tokio::test]
async fn certificate_conditions_and_headers() {
    let s = snapshot(&[mk_policy("partners", PARTNERS)], DefaultAction::Deny);
    let token = good();
    let (partner, digest) = crate::fixtures::client_certificate(&["billing.partners.example"]);
    let (other, _) = crate::fixtures::client_certificate(&["billing.other.example"]);

    let ok = decide(
        &s,
        &req("/partners/1")
            .bearer(&token)
            .certificate(&partner)
            .header("x-client-cert-sha256", "forged"),
    )
    .await;
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        allowed(&ok).headers_to_set,
        vec![("x-client-cert-sha256".to_string(), hex)]
    );

    // Another SAN, no certificate, or one that does not parse: the condition denies.
    for (r, why) in [
        (
            req("/partners/1").bearer(&token).certificate(&other),
            "is false",
        ),
        (
            req("/partners/1").bearer(&token),
            "No such key: certificate",
        ),
        (
            req("/partners/1").bearer(&token).certificate("garbage"),
            "not one PEM certificate",
        ),
    ] {
        let d = decide(&s, &r).await;
        let deny = denied(&d);
        assert_eq!((deny.status, deny.reason), (403, Reason::ConditionFailed));
        assert!(deny.description.contains(why), "{}", deny.description);
        assert!(
            deny.body.contains("a partner certificate is required"),
            "{}",
            deny.body
        );
    }

    // Without a token, the certificate alone decides the anonymous rule (after the policy's
    // condition, which anonymous requests meet too).
    let health = decide(&s, &req("/partners/healthz").certificate(&partner)).await;
    let allow = allowed(&health);
    assert_eq!(allow.reason, Reason::Anonymous);
    assert!(
        allow
            .headers_to_set
            .iter()
            .any(|(k, _)| k == "x-client-cert-sha256")
    );
    for r in [
        req("/partners/healthz"),
        req("/partners/healthz").certificate(&other),
    ] {
        assert_eq!(
            denied(&decide(&s, &r).await).reason,
            Reason::ConditionFailed
        );
    }
}
