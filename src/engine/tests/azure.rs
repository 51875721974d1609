//! The Azure AD profile against an Azure-shaped discovery server on 127.0.0.1: v1 and v2
//! tokens with Azure's claims, and the Graph / version / caller diagnostics word for word.

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use serde_json::{Value, json};

use super::*;
use crate::jwks::{FetchSettings, Fetcher, KeySources, RefreshSettings};
use crate::local_issuer::jwks;
use crate::policy::JwtPolicySpec;

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const OTHER_TENANT: &str = "f8cdef31-a31e-4b4a-93e4-5f571e91255a";
const API_CLIENT_ID: &str = "6e74172b-be56-4843-9ff4-e66a39bb12e3";
const CALLER: &str = "2d4d11a2-f814-46a7-890a-274a72a7309e";

/// Serves what login.microsoftonline.com serves for a tenant: v1 and v2 discovery documents
/// (v1 announcing `https://sts.windows.net/{tenant}/`) and the key sets they point to.
async fn azure_discovery() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let app = Router::new()
        .route(
            "/{tenant}/.well-known/openid-configuration",
            get(
                |State(base): State<String>, Path(tenant): Path<String>| async move {
                    axum::Json(json!({
                        "issuer": format!("https://sts.windows.net/{tenant}/"),
                        "jwks_uri": format!("{base}/common/discovery/keys"),
                        "token_endpoint": format!("{base}/{tenant}/oauth2/token"),
                    }))
                },
            ),
        )
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(
                |State(base): State<String>, Path(tenant): Path<String>| async move {
                    axum::Json(json!({
                        "issuer": format!("{base}/{tenant}/v2.0"),
                        "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
                        "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
                    }))
                },
            ),
        )
        .route("/common/discovery/keys", get(keys))
        .route("/{tenant}/discovery/v2.0/keys", get(keys))
        .with_state(base.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    base
}

async fn keys() -> axum::Json<Value> {
    axum::Json(jwks(&[&RSA]))
}

fn v1_claims(tenant: &str) -> Value {
    let now = now_secs();
    json!({
        "aud": "api://orders", "iss": format!("https://sts.windows.net/{tenant}/"),
        "iat": now - 60, "nbf": now - 60, "exp": now + 3600,
        "acr": "1", "aio": "E2ZgYDjn", "amr": ["pwd"], "appid": CALLER, "appidacr": "1",
        "name": "A User", "oid": "7f2a0e2c-2f63-4c1a-8b0a-51c0e0f6a0a1", "scp": "orders.read",
        "roles": ["Orders.Reader"], "sub": "l3_roISQU222bULS9yi2k0XpqpOiMz5H3ZACo1GeXA",
        "tid": tenant, "unique_name": "user-1@contoso.com", "ver": "1.0",
    })
}

fn v2_claims(base: &str, tenant: &str) -> Value {
    let now = now_secs();
    json!({
        "aud": API_CLIENT_ID, "iss": format!("{base}/{tenant}/v2.0"),
        "iat": now - 60, "nbf": now - 60, "exp": now + 3600,
        "azp": CALLER, "azpacr": "1", "name": "A User",
        "oid": "7f2a0e2c-2f63-4c1a-8b0a-51c0e0f6a0a1", "preferred_username": "user-1@contoso.com",
        "rh": "0.AXEA", "scp": "orders.read", "roles": ["Orders.Reader"],
        "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "tid": tenant,
        "uti": "fqiBqXLPj0eQa82S-IYFAA", "ver": "2.0",
    })
}

fn with(claims: &Value, changes: Value) -> Value {
    let mut claims = claims.clone();
    for (k, v) in changes.as_object().expect("object") {
        claims[k] = v.clone();
    }
    claims
}

fn azure_policy(base: &str, extra: &str) -> Arc<Policy> {
    let yaml = format!(
        r#"{{azureAd: {{tenantId: {TENANT}, audiences: ["api://orders", "{API_CLIENT_ID}"],
              clientApplicationIds: ["{CALLER}"], authority: "{base}", allowInsecureHttp: true{extra}}},
            requiredClaims: [{{name: scp, separator: " ", values: [orders.read]}}]}}"#
    );
    let spec: JwtPolicySpec = serde_yaml::from_str(&yaml).expect("spec");
    let sources = KeySources::new(
        Fetcher::new(FetchSettings::default()).expect("client"),
        RefreshSettings::default(),
    );
    Arc::new(compile_with(&sources, "shop", "orders", &spec).expect("compiles"))
}

async fn judge_token(policy: &Arc<Policy>, token: &str) -> Decision {
    let s = snapshot(std::slice::from_ref(policy), DefaultAction::Deny);
    decide(&s, &req("/orders").bearer(token)).await
}

fn description(decision: &Decision) -> (Reason, String) {
    let deny = denied(decision);
    (deny.reason, deny.description.clone())
}

#[tokio::test]
async fn v1_and_v2_tokens_with_azure_claims_are_accepted() {
    let base = azure_discovery().await;
    let policy = azure_policy(&base, "");
    let issuers: Vec<&str> = policy.issuers.iter().map(|i| i.issuer.as_str()).collect();
    assert_eq!(
        issuers,
        [
            format!("https://sts.windows.net/{TENANT}/"),
            format!("{base}/{TENANT}/v2.0")
        ]
    );
    let v1 = RSA.mint(&v1_claims(TENANT)).expect("mint");
    let decision = judge_token(&policy, &v1).await;
    assert_eq!(
        allowed(&decision).claims.as_ref().expect("claims").map()["ver"],
        "1.0"
    );
    let v2 = RSA.mint(&v2_claims(&base, TENANT)).expect("mint");
    let decision = judge_token(&policy, &v2).await;
    assert_eq!(
        allowed(&decision).claims.as_ref().expect("claims").map()["ver"],
        "2.0"
    );

    // requiredClaims compose with the profile.
    let no_scope = RSA
        .mint(&with(&v2_claims(&base, TENANT), json!({"scp": "profile"})))
        .expect("mint");
    assert_eq!(
        description(&judge_token(&policy, &no_scope).await).0,
        Reason::ClaimMismatch
    );
}

#[tokio::test]
async fn a_token_of_the_other_version_names_access_token_accepted_version() {
    let base = azure_discovery().await;
    let v2_only = azure_policy(&base, ", versions: [v2]");
    let v1 = RSA.mint(&v1_claims(TENANT)).expect("mint");
    assert_eq!(
        description(&judge_token(&v2_only, &v1).await),
        (
            Reason::AzureTokenVersion,
            "this is an Azure AD v1.0 token and this API accepts v2.0 tokens only; set accessTokenAcceptedVersion: 2 in the API's app registration manifest".to_string()
        )
    );
    let v1_only = azure_policy(&base, ", versions: [v1]");
    let v2 = RSA.mint(&v2_claims(&base, TENANT)).expect("mint");
    let decision = judge_token(&v1_only, &v2).await;
    assert_eq!(
        description(&decision),
        (
            Reason::AzureTokenVersion,
            "this is an Azure AD v2.0 token and this API accepts v1.0 tokens only; set accessTokenAcceptedVersion: null (or 1) in the API's app registration manifest".to_string()
        )
    );
    assert!(
        denied(&decision)
            .hint
            .as_deref()
            .unwrap_or_default()
            .contains("spec.azureAd.versions")
    );
    // Another tenant's token is simply a foreign issuer.
    let foreign = RSA.mint(&v1_claims(OTHER_TENANT)).expect("mint");
    assert_eq!(
        description(&judge_token(&v2_only, &foreign).await).0,
        Reason::IssuerNotAllowed
    );
}

#[tokio::test]
async fn graph_tokens_are_named_as_such() {
    let base = azure_discovery().await;
    let policy = azure_policy(&base, "");
    // What a client gets when it asks for User.Read: Graph's audience and a nonce in the header.
    let graph_claims = with(
        &v1_claims(TENANT),
        json!({"aud": "00000003-0000-0000-c000-000000000000", "scp": "User.Read"}),
    );
    let header = json!({"typ": "JWT", "alg": "RS256", "kid": "rsa-1", "x5t": "rsa-1",
        "nonce": "ZM2dNQvGUXzVm5bM7pA1HXw7vbrDNzQX2PD6yv6Vl3c"});
    let graph = RSA.mint_with_header(&header, &graph_claims).expect("mint");
    let (reason, text) = description(&judge_token(&policy, &graph).await);
    assert_eq!(reason, Reason::AzureGraphToken);
    assert_eq!(
        text,
        "this token is for Microsoft Graph and cannot be validated by a third party; request a token for your API's scope (api://…/.default)"
    );
    // Graph's audience alone (no nonce) says the same in other words.
    let graph_aud = RSA.mint(&graph_claims).expect("mint");
    let decision = judge_token(&policy, &graph_aud).await;
    assert_eq!(
        description(&decision),
        (
            Reason::AzureGraphToken,
            "the token was requested for Microsoft Graph (aud \"00000003-0000-0000-c000-000000000000\"), not for this API; request a token for your API's scope (api://…/.default)".to_string()
        )
    );
    assert!(
        denied(&decision)
            .hint
            .as_deref()
            .unwrap_or_default()
            .contains("scope api://orders/.default")
    );
    // The header challenge stays ASCII.
    let challenge = denied(&decision)
        .www_authenticate
        .clone()
        .unwrap_or_default();
    assert!(challenge.contains("(api://.../.default)"), "{challenge}");
}

#[tokio::test]
async fn the_caller_and_tenant_are_checked() {
    let base = azure_discovery().await;
    let policy = azure_policy(&base, "");
    let stranger = RSA
        .mint(&with(
            &v1_claims(TENANT),
            json!({"appid": "11111111-2222-3333-4444-555555555555"}),
        ))
        .expect("mint");
    assert_eq!(
        description(&judge_token(&policy, &stranger).await),
        (
            Reason::ClaimMismatch,
            "the calling application (appid \"11111111-2222-3333-4444-555555555555\") is not allowed to call this API".to_string()
        )
    );
    let no_azp = with(&v2_claims(&base, TENANT), json!({}));
    let mut no_azp = no_azp.as_object().cloned().expect("object");
    no_azp.remove("azp");
    let token = RSA.mint(&Value::Object(no_azp)).expect("mint");
    assert_eq!(
        description(&judge_token(&policy, &token).await).1,
        "the calling application (azp missing) is not allowed to call this API"
    );
    let wrong_tid = RSA
        .mint(&with(&v1_claims(TENANT), json!({"tid": OTHER_TENANT})))
        .expect("mint");
    assert_eq!(
        description(&judge_token(&policy, &wrong_tid).await).0,
        Reason::IssuerNotAllowed
    );
}

#[tokio::test]
async fn hand_written_azure_issuers_get_the_same_diagnostics() {
    let spec = spec(&format!(
        r#"{{issuers: [{{issuer: "https://login.microsoftonline.com/{TENANT}/v2.0",
              audiences: ["{API_CLIENT_ID}"], jwks: {}}}]}}"#,
        jwks(&[&RSA])
    ));
    let policy = Arc::new(try_compile("manual", &spec).expect("compiles"));
    let v1 = RSA
        .mint(&with(&v1_claims(TENANT), json!({"aud": API_CLIENT_ID})))
        .expect("mint");
    assert_eq!(
        description(&judge_token(&policy, &v1).await).0,
        Reason::AzureTokenVersion
    );
    let header = json!({"alg": "RS256", "kid": "rsa-1", "nonce": "abc"});
    let graph = RSA
        .mint_with_header(
            &header,
            &with(
                &v2_claims("https://login.microsoftonline.com", TENANT),
                json!({"aud": "https://graph.microsoft.com"}),
            ),
        )
        .expect("mint");
    assert_eq!(
        description(&judge_token(&policy, &graph).await).0,
        Reason::AzureGraphToken
    );
    // A v2 token of the right tenant passes.
    let ok = RSA
        .mint(&v2_claims("https://login.microsoftonline.com", TENANT))
        .expect("mint");
    allowed(&judge_token(&policy, &ok).await);
}

#[test]
fn profile_settings_are_checked_when_compiling() {
    for (extra, field) in [
        (
            "{azureAd: {tenantId: common, audiences: [api://x]}}",
            "spec.azureAd.tenantId",
        ),
        (
            "{azureAd: {tenantId: 72f988bf-86f1-41af-91ab-2d7cd011db47}}",
            "spec.azureAd.audiences",
        ),
        (
            "{azureAd: {tenantId: 72f988bf-86f1-41af-91ab-2d7cd011db47, audiences: [x], authority: http://login.example}}",
            "spec.azureAd.authority",
        ),
    ] {
        let spec = spec(extra);
        let err = try_compile("bad", &spec).expect_err(extra);
        assert!(
            err.problems.iter().any(|p| p.field == field),
            "{extra}: {err}"
        );
    }
}
