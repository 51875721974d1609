use std::collections::HashMap;
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::decision::{Decision, Reason};
use crate::engine::{Headers, Request, check, resource_metadata};
use crate::fixtures::*;
use crate::policy::{DefaultAction, Snapshot};

const WELL_KNOWN_MCP: &str = "/.well-known/oauth-protected-resource/mcp";

const MCP: &str = "{match: {hosts: [api.example.com], paths: [/mcp]}, resourceMetadata: {resource: 'https://api.example.com/mcp', scopesSupported: [mcp.tools]}}";

fn snapshot(extras: &[(&str, &str)]) -> Snapshot {
    let policies = extras
        .iter()
        .map(|(name, extra)| mk_policy(name, extra))
        .collect();
    let (snapshot, _) = Snapshot::build(policies, DefaultAction::Deny);
    snapshot
}

async fn decide(
    snapshot: &Snapshot,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    policy: Option<&str>,
) -> Decision {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let request = Request {
        host: "API.example.com:443",
        path,
        method,
        headers: Headers::Map(&headers),
        policy,
        route: None,
        source: Default::default(),
    };
    check(snapshot, &request, SystemTime::now()).await
}

fn deny(decision: &Decision) -> &crate::decision::Deny {
    match decision {
        Decision::Deny(deny) => deny,
        Decision::Allow(allow) => panic!("the upstream must not be called: {allow:?}"),
    }
}

#[tokio::test]
async fn a_get_or_head_of_the_metadata_url_is_answered_with_the_document() {
    let s = snapshot(&[("mcp", MCP)]);
    for method in ["GET", "HEAD"] {
        // The well-known path is outside match.paths; a token (even a bad one) changes nothing.
        for headers in [&[][..], &[("authorization", "Bearer not-a-token")][..]] {
            let decision = decide(&s, method, WELL_KNOWN_MCP, headers, None).await;
            let answer = deny(&decision);
            assert!(answer.is_document(), "{method}: {answer:?}");
            assert_eq!(answer.status, 200);
            assert_eq!(answer.reason, Reason::ResourceMetadata);
            assert_eq!(answer.policy.as_deref(), Some("test/mcp"));
            assert_eq!(answer.www_authenticate, None);
            let doc: Value = serde_json::from_str(&answer.body).expect("json");
            assert_eq!(doc["resource"], "https://api.example.com/mcp");
            assert_eq!(doc["authorization_servers"], json!([ISSUER]));
            assert_eq!(doc["scopes_supported"], json!(["mcp.tools"]));
            let headers = answer.headers();
            assert!(headers.contains(&("content-type", "application/json".into())));
            assert!(headers.contains(&("cache-control", "public, max-age=300".into())));
            assert!(headers.contains(&("access-control-allow-origin", "*".into())));
        }
    }
    // A query on the URL does not change it.
    let decision = decide(&s, "GET", &format!("{WELL_KNOWN_MCP}?x=1"), &[], None).await;
    assert!(deny(&decision).is_document());
}

#[tokio::test]
async fn other_methods_and_other_paths_are_judged_as_usual() {
    let s = snapshot(&[("mcp", MCP)]);
    // Another method on the URL: no document; outside the policy's paths, no policy.
    let decision = decide(&s, "POST", WELL_KNOWN_MCP, &[], None).await;
    assert_eq!(deny(&decision).reason, Reason::NoPolicy);
    // Another letter case, a longer path: not the URL.
    for path in [
        "/.well-known/oauth-protected-resource/MCP",
        "/.well-known/oauth-protected-resource/mcp/x",
        "/.well-known/oauth-protected-resource",
    ] {
        let decision = decide(&s, "GET", path, &[], None).await;
        assert_eq!(deny(&decision).reason, Reason::NoPolicy, "{path}");
    }
    // A policy over every path judges the URL's other methods like any request.
    let s = snapshot(&[(
        "mcp",
        "{match: {hosts: [api.example.com]}, resourceMetadata: {resource: 'https://api.example.com/mcp'}}",
    )]);
    let decision = decide(&s, "POST", WELL_KNOWN_MCP, &[], None).await;
    assert_eq!(deny(&decision).reason, Reason::TokenMissing);
    let decision = decide(&s, "GET", WELL_KNOWN_MCP, &[], None).await;
    assert!(deny(&decision).is_document());
}

#[tokio::test]
async fn a_route_naming_another_policy_is_judged_by_it() {
    let s = snapshot(&[
        ("mcp", MCP),
        (
            "named",
            "{match: {hosts: [named.internal]}, requiredClaims: [{name: scp, values: [x]}]}",
        ),
    ]);
    let decision = decide(&s, "GET", WELL_KNOWN_MCP, &[], Some("test/named")).await;
    assert_eq!(deny(&decision).reason, Reason::TokenMissing);
    let decision = decide(&s, "GET", WELL_KNOWN_MCP, &[], Some("test/mcp")).await;
    assert!(deny(&decision).is_document());
}

#[tokio::test]
async fn conflicting_documents_are_refused_never_guessed() {
    let s = snapshot(&[
        ("mcp", MCP),
        (
            "writes",
            "{match: {hosts: [api.example.com], paths: [/mcp/tools]}, resourceMetadata: {resource: 'https://api.example.com/mcp', scopesSupported: [other]}}",
        ),
    ]);
    let decision = decide(&s, "GET", WELL_KNOWN_MCP, &[], None).await;
    let refused = deny(&decision);
    assert_eq!(refused.status, 403);
    assert_eq!(refused.reason, Reason::PolicyConflict);
    assert!(refused.description.contains("test/mcp, test/writes"));
    assert!(
        refused
            .headers()
            .contains(&("cache-control", "no-store".into()))
    );
}

#[tokio::test]
async fn challenges_of_the_policy_name_the_metadata_url() {
    let s = snapshot(&[
        (
            "mcp",
            "{match: {hosts: [api.example.com], paths: [/mcp]}, resourceMetadata: {resource: 'https://api.example.com/mcp'}, rules: [{paths: [/mcp/admin], requiredClaims: [{name: roles, values: [admin]}]}]}",
        ),
        (
            "plain",
            "{match: {hosts: [api.example.com], paths: [/plain]}}",
        ),
    ]);
    let param =
        r#"resource_metadata="https://api.example.com/.well-known/oauth-protected-resource/mcp""#;
    let expired = RSA
        .mint(&claims_with(
            json!({"exp": crate::local_issuer::now_secs() - 600}),
        ))
        .expect("mint");
    let good = RSA.mint(&good_claims()).expect("mint");
    let cases = [
        ("/mcp", None, 401, Reason::TokenMissing),
        ("/mcp", Some(expired.as_str()), 401, Reason::TokenExpired),
        (
            "/mcp/admin",
            Some(good.as_str()),
            403,
            Reason::InsufficientScope,
        ),
    ];
    for (path, token, status, reason) in cases {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|b| ("authorization", b.as_str()))
            .collect();
        let decision = decide(&s, "GET", path, &headers, None).await;
        let denied = deny(&decision);
        assert_eq!((denied.status, denied.reason), (status, reason), "{path}");
        let challenge = denied.www_authenticate.as_deref().expect("a challenge");
        assert!(challenge.starts_with("Bearer "), "{challenge}");
        assert!(challenge.contains(param), "{reason}: {challenge}");
    }
    // A policy that declares no resource: no parameter.
    let decision = decide(&s, "GET", "/plain", &[], None).await;
    let challenge = deny(&decision).www_authenticate.clone().expect("challenge");
    assert_eq!(challenge, r#"Bearer realm="api.example.com""#);
}

#[test]
fn the_http_listener_endpoint_answers_only_declared_urls() {
    let s = snapshot(&[("mcp", MCP)]);
    let answer = resource_metadata(&s, "api.example.com", WELL_KNOWN_MCP, "GET");
    assert!(deny(&answer).is_document());
    let cases = [
        (
            "api.example.com",
            "/.well-known/oauth-protected-resource",
            "GET",
            403,
            Reason::NoPolicy,
        ),
        (
            "other.example.com",
            WELL_KNOWN_MCP,
            "GET",
            403,
            Reason::NoPolicy,
        ),
        (
            "api.example.com",
            WELL_KNOWN_MCP,
            "POST",
            403,
            Reason::NoPolicy,
        ),
        (
            "api.example.com:x",
            WELL_KNOWN_MCP,
            "GET",
            400,
            Reason::RequestMalformed,
        ),
        (
            "api.example.com",
            "/.well-known/oauth-protected-resource/%2e%2e/mcp",
            "GET",
            400,
            Reason::RequestMalformed,
        ),
    ];
    for (host, path, method, status, reason) in cases {
        let answer = resource_metadata(&s, host, path, method);
        let refused = deny(&answer);
        assert_eq!(
            (refused.status, refused.reason),
            (status, reason),
            "{host} {path} {method}"
        );
        assert!(!refused.is_document());
    }
}
