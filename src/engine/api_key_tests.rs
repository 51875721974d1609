//! API keys through the whole check: lookup, the policy's and rules' requirements, CEL,
//! forwarded headers, and a key together with a token.

use std::collections::HashMap;

use super::*;
use crate::fixtures::*;
use crate::policy::DefaultAction;

const ACME: &str = "acme-7c1e0f5b9d2a4e6c8b3f1a0d9e7c5b2a";
const GLOBEX: &str = "globex-1f2e3d4c5b6a79880a1b2c3d4e5f6a7b";

/// Secret manifests in a folder, as file mode reads them; one has another label.
fn key_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = |name: &str, label: &str, key: &str, owner: &str, scopes: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  labels:\n    tollgate.dev/api-key: {label}\nstringData:\n  key: {key}\n  owner: {owner}\n  scopes: {scopes}\n"
        )
    };
    std::fs::write(
        dir.path().join("acme.yaml"),
        secret("acme", "orders", ACME, "acme", "orders:read orders:write"),
    )
    .expect("write");
    // `data` is base64, as `kubectl get secret -o yaml` writes it.
    std::fs::write(
        dir.path().join("globex.yaml"),
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: globex\n  labels:\n    tollgate.dev/api-key: orders\ndata:\n  key: {}\n  owner: {}\n  scopes: {}\n",
            B64S.encode(GLOBEX),
            B64S.encode("globex"),
            B64S.encode("orders:read"),
        ),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("other.yaml"),
        secret(
            "other",
            "billing",
            "billing-0123456789abcdef0123456789abcdef",
            "initech",
            "billing",
        ),
    )
    .expect("write");
    dir
}

const B64S: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn policy(dir: &tempfile::TempDir, extra: &str) -> Arc<Policy> {
    let api_keys = format!(
        "apiKeys: {{dir: {}, secretSelector: {{matchLabels: {{tollgate.dev/api-key: orders}}}}{extra}}}",
        dir.path().display()
    );
    mk_policy(
        "orders",
        &format!(
            "{{match: {{hosts: [api.example.com], paths: [/orders]}},
              rules: [{{paths: [/orders/write], requiredClaims: [{{name: scope, separator: ' ', values: ['orders:write']}}]}}],
              when: [{{expression: \"request.path != '/orders/blocked/' + claims.sub\"}}],
              forward: {{claimsToHeaders: [{{claim: sub, header: x-owner}}, {{claim: key_id, header: x-key-id}}],
                        headers: [{{name: x-scopes, expression: \"claims.scope\"}}]}},
              {api_keys}}}"
        ),
    )
}

fn keys_only(dir: &tempfile::TempDir, extra: &str) -> Arc<Policy> {
    let spec = spec(&format!(
        "{{match: {{hosts: [api.example.com]}}, forward: {{claimsToHeaders: [{{claim: sub, header: x-owner}}]}},
          apiKeys: {{dir: {}, secretSelector: {{matchLabels: {{tollgate.dev/api-key: orders}}}}{extra}}}}}",
        dir.path().display()
    ));
    Arc::new(try_compile("keys", &spec).expect("policy compiles"))
}

async fn decide(policy: &Arc<Policy>, path: &str, headers: &[(&str, &str)]) -> Decision {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let snapshot = Snapshot::build(vec![policy.clone()], DefaultAction::Deny).0;
    let request = Request {
        host: "api.example.com",
        path,
        method: "GET",
        headers: Headers::Map(&headers),
        policy: None,
        route: None,
        source: Peer::default(),
    };
    check(&snapshot, &request, SystemTime::now()).await
}

fn allowed(decision: &Decision) -> &Allow {
    match decision {
        Decision::Allow(a) => a,
        Decision::Deny(d) => panic!(
            "expected allow, got {} {}: {}",
            d.status, d.reason, d.description
        ),
    }
}

fn denied(decision: &Decision) -> &Deny {
    match decision {
        Decision::Deny(d) => d,
        Decision::Allow(a) => panic!("expected a denial, got {a:?}"),
    }
}

fn set<'a>(allow: &'a Allow, name: &str) -> Option<&'a str> {
    allow
        .headers_to_set
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn a_key_is_an_identity_for_forward_headers_and_cel() {
    let dir = key_dir();
    let p = policy(&dir, "");
    assert_eq!(p.api_keys.as_ref().expect("keys").len(), 2);
    let decision = decide(
        &p,
        "/orders/1",
        &[("x-api-key", ACME), ("x-owner", "spoofed")],
    )
    .await;
    let allow = allowed(&decision);
    assert_eq!(allow.reason, Reason::Valid);
    assert_eq!(allow.issuer, None);
    assert_eq!(set(allow, "x-owner"), Some("acme"));
    assert_eq!(set(allow, "x-scopes"), Some("orders:read orders:write"));
    let id = apikeys::key_id(&apikeys::digest(ACME.as_bytes()));
    assert_eq!(set(allow, "x-key-id"), Some(id.as_str()));
    // The key never travels upstream.
    assert!(allow.headers_to_remove.contains(&"x-api-key".to_string()));
    assert!(!allow.headers_to_set.iter().any(|(_, v)| v.contains(ACME)));
    // The data form (base64) reads the same way.
    let decision = decide(&p, "/orders/1", &[("x-api-key", GLOBEX)]).await;
    assert_eq!(set(allowed(&decision), "x-owner"), Some("globex"));
    // CEL sees the owner as claims.sub.
    let decision = decide(&p, "/orders/blocked/acme", &[("x-api-key", ACME)]).await;
    assert_eq!(denied(&decision).reason, Reason::ConditionFailed);
    allowed(&decide(&p, "/orders/blocked/acme", &[("x-api-key", GLOBEX)]).await);
}

#[tokio::test]
async fn a_rule_checks_the_scopes_of_the_key() {
    let dir = key_dir();
    let p = policy(&dir, "");
    allowed(&decide(&p, "/orders/write", &[("x-api-key", ACME)]).await);
    let decision = decide(&p, "/orders/write", &[("x-api-key", GLOBEX)]).await;
    let deny = denied(&decision);
    assert_eq!((deny.status, deny.reason), (403, Reason::InsufficientScope));
}

#[tokio::test]
async fn required_claims_apply_to_keys() {
    let dir = key_dir();
    let spec = spec(&format!(
        "{{match: {{hosts: [api.example.com]}}, requiredClaims: [{{name: scope, separator: ' ', values: ['orders:write']}}],
          apiKeys: {{dir: {}, secretSelector: {{matchLabels: {{tollgate.dev/api-key: orders}}}}}}}}",
        dir.path().display()
    ));
    let p = Arc::new(try_compile("keys", &spec).expect("compiles"));
    allowed(&decide(&p, "/", &[("x-api-key", ACME)]).await);
    let decision = decide(&p, "/", &[("x-api-key", GLOBEX)]).await;
    assert_eq!(denied(&decision).reason, Reason::ClaimMismatch);
}

#[tokio::test]
async fn a_wrong_key_is_401_api_key_invalid_with_an_api_key_challenge() {
    let dir = key_dir();
    let p = keys_only(&dir, "");
    let wrong = format!("{}x", &ACME[..ACME.len() - 1]);
    let two = format!("{ACME}, {GLOBEX}");
    let cases = [
        vec![("x-api-key", wrong.as_str())],
        // A key of another selector's Secret is not one of this policy's.
        vec![("x-api-key", "billing-0123456789abcdef0123456789abcdef")],
        // Two keys (a repeated header) are not one.
        vec![("x-api-key", two.as_str())],
    ];
    for headers in cases {
        let decision = decide(&p, "/", &headers).await;
        let deny = denied(&decision);
        assert_eq!(
            (deny.status, deny.reason),
            (401, Reason::ApiKeyInvalid),
            "{headers:?}"
        );
        assert_eq!(
            deny.www_authenticate.as_deref(),
            Some("ApiKey realm=\"api.example.com\", header=\"x-api-key\"")
        );
        assert!(deny.body.contains("api_key_invalid"), "{}", deny.body);
        // Neither the answer nor the log line carries the key.
        for text in [&deny.body, &deny.description] {
            assert!(
                !text.contains(&ACME[..12]) && !text.contains(&wrong[..12]),
                "{text}"
            );
        }
    }
    let decision = decide(&p, "/", &[("x-api-key", &wrong)]).await;
    let id = apikeys::key_id(&apikeys::digest(wrong.as_bytes()));
    assert_eq!(denied(&decision).token_id.as_deref(), Some(id.as_str()));
}

#[tokio::test]
async fn no_key_where_only_keys_are_accepted_is_api_key_missing() {
    let dir = key_dir();
    let p = keys_only(&dir, "");
    let decision = decide(&p, "/", &[("authorization", "Bearer abc")]).await;
    let deny = denied(&decision);
    assert_eq!((deny.status, deny.reason), (401, Reason::ApiKeyMissing));
    assert_eq!(
        deny.www_authenticate.as_deref(),
        Some("ApiKey realm=\"api.example.com\", header=\"x-api-key\"")
    );
    // With only a query parameter named, the header is not read (nor named).
    let p = keys_only(&dir, ", query: api_key");
    let decision = decide(&p, "/", &[("x-api-key", ACME)]).await;
    let deny = denied(&decision);
    assert_eq!(deny.reason, Reason::ApiKeyMissing);
    assert_eq!(
        deny.www_authenticate.as_deref(),
        Some("ApiKey realm=\"api.example.com\", query=\"api_key\"")
    );
    allowed(&decide(&p, &format!("/?api_key={ACME}"), &[]).await);
}

#[tokio::test]
async fn a_key_and_a_token_together_are_refused_unless_the_policy_prefers_the_token() {
    let dir = key_dir();
    let token = RSA.mint(&good_claims()).expect("mint");
    let bearer = format!("Bearer {token}");
    let both = [("x-api-key", ACME), ("authorization", bearer.as_str())];
    let decision = decide(&policy(&dir, ""), "/orders/1", &both).await;
    let deny = denied(&decision);
    assert_eq!((deny.status, deny.reason), (400, Reason::ApiKeyAmbiguous));
    // Even a wrong token with a good key is refused: the policy cannot know which one counts.
    let decision = decide(
        &policy(&dir, ""),
        "/orders/1",
        &[("x-api-key", ACME), ("authorization", "Bearer nope")],
    )
    .await;
    assert_eq!(denied(&decision).reason, Reason::ApiKeyAmbiguous);

    let p = policy(&dir, ", withToken: Token");
    let decision = decide(&p, "/orders/1", &both).await;
    let allow = allowed(&decision);
    // The token was judged: its subject, its issuer; the key is removed.
    assert_eq!(set(allow, "x-owner"), Some("user-1"));
    assert_eq!(allow.issuer.as_deref(), Some(ISSUER));
    assert!(allow.headers_to_remove.contains(&"x-api-key".to_string()));
    // And a token alone, or a key alone, still pass.
    allowed(&decide(&p, "/orders/1", &both[1..]).await);
    allowed(&decide(&p, "/orders/1", &both[..1]).await);
    // With tokens accepted, nothing at all is the token's challenge.
    let decision = decide(&p, "/orders/1", &[]).await;
    assert_eq!(denied(&decision).reason, Reason::TokenMissing);
}

#[tokio::test]
async fn a_key_in_the_query_is_removed_and_marked_for_the_transport() {
    let dir = key_dir();
    let p = keys_only(&dir, ", header: x-api-key, query: api_key");
    let decision = decide(&p, &format!("/x?a=1&api_key={ACME}"), &[]).await;
    let allow = allowed(&decision);
    assert_eq!(allow.query_params_to_remove, ["api_key"]);
    assert!(allow.query_key);
    // The header form does not touch the query, so forward authentication may pass it.
    let decision = decide(&p, "/x?a=1", &[("x-api-key", ACME)]).await;
    assert!(!allowed(&decision).query_key);
    // In both places: not one key.
    let decision = decide(&p, &format!("/x?api_key={ACME}"), &[("x-api-key", ACME)]).await;
    assert_eq!(denied(&decision).reason, Reason::ApiKeyInvalid);
}

#[test]
fn key_secrets_that_cannot_be_keys_fail_the_policy() {
    let dir = key_dir();
    std::fs::write(
        dir.path().join("short.yaml"),
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: short\n  labels:\n    tollgate.dev/api-key: orders\nstringData:\n  key: tooshort\n  owner: x\n",
    )
    .expect("write");
    let spec = spec(&format!(
        "{{apiKeys: {{dir: {}, secretSelector: {{matchLabels: {{tollgate.dev/api-key: orders}}}}}}}}",
        dir.path().display()
    ));
    let error = try_compile("keys", &spec).expect_err("refused").to_string();
    assert!(
        error.contains("short.yaml (short)") && error.contains("at least 32"),
        "{error}"
    );
    assert!(!error.contains("tooshort"), "{error}");

    for (extra, message) in [
        ("secretSelector: {}", "name at least one label"),
        (
            "secretSelector: {matchLabels: {a: b}}, header: authorization",
            "carries the token",
        ),
        (
            "secretSelector: {matchLabels: {a: b}}, dir: /nonexistent/keys",
            "/nonexistent/keys",
        ),
        ("secretSelector: {matchLabels: {a: b}}", "apiKeys.dir"),
    ] {
        let error = try_compile("keys", &spec_with(&format!("{{apiKeys: {{{extra}}}}}")))
            .expect_err(extra)
            .to_string();
        assert!(error.contains(message), "{extra}: {error}");
    }
}
