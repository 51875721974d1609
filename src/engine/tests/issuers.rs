//! `maxTokenLifetime`, `scope` in `insufficient_scope` challenges, and issuer templates with
//! a tenant allowlist, through the engine: tenants' keys come from a discovery server on
//! 127.0.0.1 that serves any realm, so only the policy's list decides which are fetched.

use std::sync::{LazyLock, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use serde_json::{Value, json};

use super::*;
use crate::jwks::{FetchSettings, Fetcher, KeySources, RefreshSettings};
use crate::local_issuer::{SigningKey, jwks};
use crate::policy::JwtPolicySpec;

/// Keys by realm: each tenant signs with its own key.
static REALM_KEYS: LazyLock<Vec<(&'static str, SigningKey)>> = LazyLock::new(|| {
    ["acme", "globex", "initech"]
        .into_iter()
        .map(|realm| (realm, SigningKey::rsa(realm, "RS256", 2048).expect("key")))
        .collect()
});

fn realm_key(realm: &str) -> &'static SigningKey {
    &REALM_KEYS
        .iter()
        .find(|(r, _)| *r == realm)
        .expect("a realm key")
        .1
}

#[derive(Clone)]
struct Realms {
    base: String,
    /// Every path asked for, in order.
    asked: Arc<Mutex<Vec<String>>>,
}

/// A Keycloak-like server: `/realms/{realm}` discovery and keys for any realm.
async fn realms() -> Realms {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let state = Realms {
        base: format!("http://{}", listener.local_addr().expect("addr")),
        asked: Arc::default(),
    };
    let app = Router::new()
        .route(
            "/realms/{realm}/.well-known/openid-configuration",
            get(
                |State(s): State<Realms>, Path(realm): Path<String>| async move {
                    s.asked
                        .lock()
                        .expect("lock")
                        .push(format!("{realm} discovery"));
                    axum::Json(json!({
                        "issuer": format!("{}/realms/{realm}", s.base),
                        "jwks_uri": format!("{}/realms/{realm}/certs", s.base),
                    }))
                },
            ),
        )
        .route(
            "/realms/{realm}/certs",
            get(
                |State(s): State<Realms>, Path(realm): Path<String>| async move {
                    s.asked.lock().expect("lock").push(format!("{realm} keys"));
                    let keys: Vec<&SigningKey> = REALM_KEYS
                        .iter()
                        .filter(|(r, _)| *r == realm)
                        .map(|(_, k)| k)
                        .collect();
                    axum::Json(jwks(&keys))
                },
            ),
        )
        .with_state(state.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    state
}

fn live_policy(yaml: &str) -> Arc<Policy> {
    let spec: JwtPolicySpec = serde_yaml::from_str(yaml).expect("spec");
    let sources = KeySources::new(
        Fetcher::new(FetchSettings::default()).expect("client"),
        RefreshSettings::default(),
    );
    Arc::new(compile_with(&sources, "shop", "orders", &spec).expect("compiles"))
}

fn tenant_claims(base: &str, realm: &str, changes: Value) -> Value {
    let mut claims = claims_with(json!({"iss": format!("{base}/realms/{realm}")}));
    for (k, v) in changes.as_object().expect("object") {
        claims[k] = v.clone();
    }
    claims
}

async fn judge(policy: &Arc<Policy>, path: &str, token: &str) -> Decision {
    let s = snapshot(std::slice::from_ref(policy), DefaultAction::Deny);
    decide(&s, &req(path).bearer(token)).await
}

#[tokio::test]
async fn listed_tenants_pass_with_their_own_keys_and_others_are_named_and_never_fetched() {
    let server = realms().await;
    let base = &server.base;
    let policy = live_policy(&format!(
        "{{issuers: [{{issuer: '{base}/realms/{{tenant}}', tenants: [acme, globex], audiences: [{AUDIENCE}], allowInsecureHttp: true}}]}}"
    ));
    for realm in ["acme", "globex"] {
        let token = realm_key(realm)
            .mint(&tenant_claims(base, realm, json!({})))
            .expect("mint");
        let decision = judge(&policy, "/orders", &token).await;
        assert_eq!(
            allowed(&decision).issuer.as_deref(),
            Some(format!("{base}/realms/{realm}").as_str())
        );
    }
    // A tenant the server serves but the policy does not list.
    let initech = realm_key("initech")
        .mint(&tenant_claims(base, "initech", json!({})))
        .expect("mint");
    let decision = judge(&policy, "/orders", &initech).await;
    let deny = denied(&decision);
    assert_eq!((deny.status, deny.reason), (401, Reason::IssuerNotAllowed));
    assert_eq!(
        deny.description,
        format!(
            "tenant \"initech\" is not allowed for the issuer template \"{base}/realms/{{tenant}}\""
        )
    );
    assert!(
        deny.hint
            .as_deref()
            .is_some_and(|h| h.contains("spec.issuers[0].tenants") && h.contains("add \"initech\"")),
        "{:?}",
        deny.hint
    );
    // One tenant's key never speaks for another tenant.
    let forged = realm_key("acme")
        .mint(&tenant_claims(base, "globex", json!({})))
        .expect("mint");
    assert_eq!(
        judge(&policy, "/orders", &forged).await.reason(),
        Reason::KeyNotFound
    );
    let asked = server.asked.lock().expect("lock").clone();
    assert!(
        asked.iter().all(|a| !a.starts_with("initech")),
        "keys of a tenant not listed were fetched: {asked:?}"
    );
    assert!(asked.contains(&"acme keys".to_string()), "{asked:?}");
}

#[tokio::test]
async fn explain_says_which_tenant_the_token_resolved_to() {
    let server = realms().await;
    let base = &server.base;
    let policy = live_policy(&format!(
        "{{issuers: [{{issuer: '{base}/realms/{{tenantid}}', tenants: [acme], audiences: [{AUDIENCE}], allowInsecureHttp: true}}]}}"
    ));
    let s = snapshot(std::slice::from_ref(&policy), DefaultAction::Deny);
    let token = realm_key("acme")
        .mint(&tenant_claims(base, "acme", json!({})))
        .expect("mint");
    let r = req("/orders").bearer(&token);
    let request = Request {
        host: r.host,
        path: &r.path,
        method: r.method,
        headers: Headers::Map(&r.headers),
        policy: None,
        route: None,
        source: Default::default(),
    };
    let decision = check_traced(&s, &request, SystemTime::now(), Trace::on()).await;
    let trace = decision.trace().expect("trace");
    let issuer = trace
        .steps
        .iter()
        .find(|s| s.check == "issuer")
        .expect("issuer step");
    assert_eq!(
        issuer.detail,
        format!(
            "{base}/realms/acme is accepted: tenant \"acme\" of the issuer template {base}/realms/{{tenantid}} (spec.issuers[0].tenants)"
        )
    );
}

#[tokio::test]
async fn a_token_living_longer_than_max_token_lifetime_is_refused_with_its_own_reason() {
    let policy = mk_policy(
        "orders",
        &format!(
            "{{issuers: [{{issuer: '{ISSUER}', audiences: [{AUDIENCE}], jwks: {jwks}, maxTokenLifetime: 1h}}]}}",
            jwks = trusted_jwks()
        ),
    );
    let now = now_secs();
    let ok = RSA
        .mint(&claims_with(json!({"iat": now - 10, "exp": now + 3000})))
        .expect("mint");
    assert!(judge(&policy, "/orders", &ok).await.is_allow());
    let forever = RSA
        .mint(&claims_with(
            json!({"iat": now - 10, "exp": 9_223_372_036_854_775_808u64}),
        ))
        .expect("mint");
    let decision = judge(&policy, "/orders", &forever).await;
    let deny = denied(&decision);
    assert_eq!(
        (deny.status, deny.reason),
        (401, Reason::TokenLifetimeExceeded)
    );
    assert_eq!(
        deny.www_authenticate.as_deref(),
        Some(
            "Bearer realm=\"api.example.com\", error=\"invalid_token\", error_description=\"token_lifetime_exceeded: the access token's lifetime is longer than this API accepts\""
        )
    );
}

const SCOPED: &str = r#"{match: {hosts: [api.example.com], paths: [/orders]},
    requiredClaims: [{name: scope, separator: " ", values: [api]}],
    rules: [{paths: [/orders/admin], requiredClaims: [{name: scope, match: all, separator: " ", values: [orders.read, orders.admin]}]},
            {paths: [/orders/write], requiredClaims: [{name: scope, separator: " ", values: [orders.write, orders.admin]}]},
            {paths: [/orders/ops], requiredClaims: [{name: roles, values: [ops]}, {name: scope, match: all, separator: " ", values: [orders.ops]}]},
            {paths: [/orders/odd], requiredClaims: [{name: scope, values: ["orders read"]}]}]}"#;

fn scoped_token(scope: &str, roles: &[&str]) -> String {
    RSA.mint(&claims_with(json!({"scope": scope, "roles": roles})))
        .expect("mint")
}

#[tokio::test]
async fn insufficient_scope_challenges_name_the_scope_to_request() {
    let policy = mk_policy("orders", SCOPED);
    let challenge = |scope: Option<&str>| {
        let mut text = "Bearer realm=\"api.example.com\", error=\"insufficient_scope\", error_description=\"insufficient_scope: the access token lacks the scope or role this request needs\"".to_string();
        if let Some(scope) = scope {
            text.push_str(&format!(", scope=\"{scope}\""));
        }
        text
    };
    let cases = [
        // match: all, with the policy-wide scope first.
        (
            "/orders/admin",
            "api orders.read",
            &["ops"][..],
            Some("api orders.read orders.admin"),
        ),
        // match: any names its first value.
        (
            "/orders/write",
            "api orders.read",
            &[],
            Some("api orders.write"),
        ),
        // A failing requirement on another claim names no scope.
        ("/orders/ops", "api orders.ops", &["user"], None),
        // ... a failing scope requirement of the same rule does.
        ("/orders/ops", "api", &["ops"], Some("api orders.ops")),
        // A value that is no scope token: no scope rather than a wrong one.
        ("/orders/odd", "api", &[], None),
    ];
    for (path, scope, roles, want) in cases {
        let decision = judge(&policy, path, &scoped_token(scope, roles)).await;
        let deny = denied(&decision);
        assert_eq!(
            (deny.status, deny.reason),
            (403, Reason::InsufficientScope),
            "{path}"
        );
        assert_eq!(
            deny.www_authenticate,
            Some(challenge(want)),
            "{path} with {scope}"
        );
    }
    // With what the challenge names, the request passes.
    for (path, scope) in [
        ("/orders/admin", "api orders.read orders.admin"),
        ("/orders/write", "api orders.write"),
        ("/orders/ops", "api orders.ops"),
    ] {
        let decision = judge(&policy, path, &scoped_token(scope, &["ops"])).await;
        assert!(decision.is_allow(), "{path}: {decision:?}");
    }
    // The rule with a value that is not a scope token is pointed out when the policy compiles.
    assert!(
        policy
            .warnings
            .iter()
            .any(|w| w.field == "spec.rules[3].requiredClaims"
                && w.message.contains("names no scope")),
        "{:?}",
        policy.warnings
    );
}

#[tokio::test]
async fn the_scope_stays_when_the_description_is_withheld() {
    let policy = mk_policy(
        "orders",
        &format!(
            "{}, deny: {{detail: none}}}}",
            SCOPED.trim_end().strip_suffix('}').expect("flow mapping")
        ),
    );
    let decision = judge(&policy, "/orders/admin", &scoped_token("api", &[])).await;
    assert_eq!(
        denied(&decision).www_authenticate.as_deref(),
        Some(
            "Bearer realm=\"api.example.com\", error=\"insufficient_scope\", scope=\"api orders.read orders.admin\""
        )
    );
}
