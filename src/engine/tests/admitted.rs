//! Issuer templates that admit tenants by a condition (`admitTenants`), through the engine:
//! tenants' keys come from a realm-per-tenant identity provider on 127.0.0.1 that answers
//! 404 for realms it does not know and records every path asked for.

use serde_json::json;

use super::*;
use crate::fixtures::Realms;
use crate::jwks::{FetchSettings, Fetcher, KeySources, RefreshSettings};
use crate::verified::{CacheLimits, TokenCache};

fn sources() -> Arc<KeySources> {
    KeySources::new(
        Fetcher::new(FetchSettings::default()).expect("client"),
        RefreshSettings::default(),
    )
}

/// A policy whose issuer is the realms template with `extra` (YAML members).
fn policy(sources: &KeySources, idp: &Realms, extra: &str) -> Arc<Policy> {
    let yaml = format!(
        "issuers: [{{issuer: '{}/realms/{{tenant}}', audiences: [{AUDIENCE}], allowInsecureHttp: true, {extra}}}]",
        idp.base
    );
    Arc::new(compile_with(sources, "shop", "orders", &spec(&yaml)).expect("compiles"))
}

async fn judge(policy: &Arc<Policy>, token: &str) -> Decision {
    let s = snapshot(std::slice::from_ref(policy), DefaultAction::Deny);
    decide(&s, &req("/orders").bearer(token)).await
}

async fn traced(policy: &Arc<Policy>, token: &str) -> Decision {
    let s = snapshot(std::slice::from_ref(policy), DefaultAction::Deny);
    let r = req("/orders").bearer(token);
    let request = Request {
        host: r.host,
        path: &r.path,
        method: r.method,
        headers: Headers::Map(&r.headers),
        policy: None,
        route: None,
        source: Default::default(),
    };
    check_traced(&s, &request, SystemTime::now(), Trace::on()).await
}

fn step<'d>(decision: &'d Decision, check: &str) -> &'d crate::trace::Step {
    decision
        .trace()
        .expect("trace")
        .steps
        .iter()
        .find(|s| s.check == check)
        .unwrap_or_else(|| panic!("no {check} step in {:?}", decision.trace()))
}

#[tokio::test]
async fn a_condition_admits_tenants_on_first_use_and_refuses_others_without_fetching() {
    let idp = Realms::start(&["acme", "cust-1", "cust-2", "initech"]).await;
    let policy = policy(
        &sources(),
        &idp,
        "tenants: [acme], admitTenants: {expression: \"tenant.startsWith('cust-')\", message: 'customer realms only'}",
    );
    // Listed and admitted tenants pass, each with its own keys.
    for realm in ["acme", "cust-1", "cust-1", "cust-2"] {
        let decision = judge(&policy, &idp.token(realm, json!({}))).await;
        assert_eq!(
            allowed(&decision).issuer.as_deref(),
            Some(idp.issuer(realm).as_str())
        );
    }
    assert_eq!(
        idp.asked_for("cust-1"),
        ["cust-1 discovery", "cust-1 keys"],
        "fetched on first use, then held"
    );

    // A tenant the condition refuses: named, its message in the answer, nothing fetched.
    let decision = judge(&policy, &idp.token("initech", json!({}))).await;
    let deny = denied(&decision);
    assert_eq!((deny.status, deny.reason), (401, Reason::IssuerNotAllowed));
    assert_eq!(
        deny.description,
        format!(
            "tenant \"initech\" is not admitted by the issuer template \"{}/realms/{{tenant}}\": spec.issuers[0].admitTenants `tenant.startsWith('cust-')` is false",
            idp.base
        )
    );
    let body: serde_json::Value = serde_json::from_str(&deny.body).expect("json");
    assert_eq!(
        body["error_description"],
        "issuer_not_allowed: customer realms only"
    );
    assert!(
        deny.hint.as_deref().is_some_and(|h| h.contains(
            "spec.issuers[0].admitTenants admits the tenants its expression is true for and spec.issuers[0].tenants lists [\"acme\"]"
        )),
        "{:?}",
        deny.hint
    );
    assert_eq!(idp.asked_for("initech"), Vec::<String>::new());

    // One tenant's key never speaks for another: cust-2 is judged by cust-2's keys.
    let forged = idp.token_signed_by("cust-2", "cust-1", json!({}));
    assert_eq!(judge(&policy, &forged).await.reason(), Reason::KeyNotFound);
    // The template's audiences hold for admitted tenants too.
    let other_api = idp.token("cust-1", json!({"aud": "api://other"}));
    assert_eq!(
        judge(&policy, &other_api).await.reason(),
        Reason::AudienceMismatch
    );
}

#[tokio::test]
async fn explain_names_the_tenant_tried_and_whether_the_condition_admitted_it() {
    let idp = Realms::start(&["cust-1"]).await;
    let policy = policy(
        &sources(),
        &idp,
        "admitTenants: {expression: \"tenant.startsWith('cust-')\"}",
    );
    let admitted = traced(&policy, &idp.token("cust-1", json!({}))).await;
    allowed(&admitted);
    let tenant = step(&admitted, "tenant");
    assert_eq!(
        tenant.detail,
        format!(
            "\"cust-1\" of the issuer template {}/realms/{{tenant}}: spec.issuers[0].admitTenants `tenant.startsWith('cust-')` is true (tenant = \"cust-1\")",
            idp.base
        )
    );
    assert_eq!(
        step(&admitted, "issuer").detail,
        format!(
            "{}/realms/cust-1 is accepted: tenant \"cust-1\" of the issuer template {}/realms/{{tenant}} (spec.issuers[0].admitTenants)",
            idp.base, idp.base
        )
    );
    let first_use = admitted
        .trace()
        .expect("trace")
        .steps
        .iter()
        .any(|s| s.check == "tenant" && s.detail.contains("admitted now"));
    assert!(first_use, "the first use is said");

    let refused = traced(&policy, &idp.token("acme", json!({}))).await;
    let issuer = step(&refused, "issuer");
    assert_eq!(issuer.outcome, crate::trace::Outcome::Fail);
    assert_eq!(issuer.reason, Some("issuer_not_allowed"));
    assert!(
        issuer
            .detail
            .starts_with("tenant \"acme\" is not admitted by the issuer template")
            && issuer
                .detail
                .ends_with("`tenant.startsWith('cust-')` is false"),
        "{}",
        issuer.detail
    );
    assert!(
        refused
            .trace()
            .expect("trace")
            .steps
            .iter()
            .all(|s| s.check != "tenant")
    );
}

#[tokio::test]
async fn an_admitted_tenant_without_keys_or_slot_answers_503_and_others_keep_theirs() {
    let idp = Realms::start(&["cust-1", "cust-2"]).await;
    let policy = policy(
        &sources(),
        &idp,
        "admitTenants: {expression: \"tenant.startsWith('cust-')\", maxTenants: 1}",
    );
    // A realm the IdP does not know: answered as an unreachable issuer is, remembered.
    for _ in 0..3 {
        let decision = judge(&policy, &idp.token("cust-9", json!({}))).await;
        let deny = denied(&decision);
        assert_eq!((deny.status, deny.reason), (503, Reason::IssuerUnavailable));
        assert!(
            deny.description.contains("tenant \"cust-9\"") && deny.description.contains("HTTP 404"),
            "{}",
            deny.description
        );
    }
    assert_eq!(idp.asked_for("cust-9"), ["cust-9 discovery"]);

    // The only slot goes to cust-1; cust-2 waits, cust-1 keeps working.
    assert!(
        judge(&policy, &idp.token("cust-1", json!({})))
            .await
            .is_allow()
    );
    let decision = judge(&policy, &idp.token("cust-2", json!({}))).await;
    let deny = denied(&decision);
    assert_eq!((deny.status, deny.reason), (503, Reason::IssuerUnavailable));
    assert!(
        deny.hint
            .as_deref()
            .is_some_and(|h| h.contains("raise spec.issuers[0].admitTenants.maxTenants")),
        "{:?}",
        deny.hint
    );
    assert_eq!(idp.asked_for("cust-2"), Vec::<String>::new());
    assert!(
        judge(&policy, &idp.token("cust-1", json!({})))
            .await
            .is_allow()
    );
}

#[tokio::test]
async fn an_admitted_tenants_token_is_cached_like_a_listed_ones() {
    let idp = Realms::start(&["cust-1"]).await;
    let policy = policy(&sources(), &idp, "admitTenants: {expression: 'true'}");
    let cache = TokenCache::new(CacheLimits::default()).expect("cache");
    let mut s = snapshot(std::slice::from_ref(&policy), DefaultAction::Deny);
    s.token_cache = Some(cache.clone());
    let token = idp.token("cust-1", json!({}));
    for _ in 0..3 {
        let decision = decide(&s, &req("/orders").bearer(&token)).await;
        assert_eq!(
            allowed(&decision).issuer.as_deref(),
            Some(idp.issuer("cust-1").as_str())
        );
    }
    let stats = cache.stats();
    assert_eq!((stats.inserts, stats.hits), (1, 2), "{stats:?}");
}
