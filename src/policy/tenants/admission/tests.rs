//! The admission of tenants by a condition against a realm-per-tenant identity provider on
//! 127.0.0.1 that counts what it is asked: the bound, the negative cache, coalesced first
//! uses, and key sources shared by URL across policies.

use std::time::Duration;

use super::*;
use crate::fixtures::{Realms, compile_with, spec};
use crate::jwks::{FetchSettings, Fetcher, RefreshSettings};
use crate::policy::Policy;

fn sources(idle: Duration, negative_ttl: Duration) -> Arc<KeySources> {
    KeySources::new(
        Fetcher::new(FetchSettings::default()).expect("client"),
        RefreshSettings {
            admitted_idle: idle,
            miss_refetch_interval: negative_ttl,
            ..RefreshSettings::default()
        },
    )
}

/// A policy whose only issuer is the realms template with `extra` (YAML members).
fn policy(sources: &KeySources, name: &str, idp: &Realms, extra: &str) -> Policy {
    let yaml = format!(
        "issuers: [{{issuer: '{}/realms/{{tenant}}', audiences: [a], allowInsecureHttp: true, {extra}}}]",
        idp.base
    );
    compile_with(sources, "shop", name, &spec(&yaml)).expect("compiles")
}

fn admission(policy: &Policy) -> &Arc<Admission> {
    policy.templates[0]
        .admission
        .as_ref()
        .expect("an admission")
}

#[tokio::test]
async fn a_full_template_refuses_new_tenants_and_evicts_none_until_one_is_idle() {
    let idp = Realms::start(&["t1", "t2", "t3"]).await;
    let sources = sources(Duration::from_millis(800), Duration::from_secs(30));
    let policy = policy(
        &sources,
        "orders",
        &idp,
        "admitTenants: {expression: \"tenant.startsWith('t')\", maxTenants: 2}",
    );
    let a = admission(&policy);
    let t1 = a.issuer("t1").await.expect("t1");
    assert!(t1.first);
    assert_eq!(t1.issuer.issuer, idp.issuer("t1"));
    let t1_tenant = t1.issuer.tenant.clone().expect("a tenant");
    assert_eq!((t1_tenant.name.as_str(), t1_tenant.admitted), ("t1", true));
    a.issuer("t2").await.expect("t2");
    assert_eq!(a.held(), 2);

    // Full: the third tenant is refused, nothing is fetched for it, nobody is evicted.
    let full = a.issuer("t3").await.expect_err("full");
    assert!(matches!(full, AdmitError::Full { max: 2, .. }), "{full:?}");
    assert!(
        full.to_string()
            .contains("all 2 tenants spec.issuers[0].admitTenants holds at once are in use"),
        "{full}"
    );
    assert_eq!(idp.asked_for("t3"), Vec::<String>::new());
    let again = a.issuer("t1").await.expect("t1 stays");
    assert!(!again.first && Arc::ptr_eq(&again.issuer, &t1.issuer));
    assert!(a.cached("t2").await.is_some());

    // t1 stays busy, t2 idles past its time: its slot is the one that frees.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        a.issuer("t1").await.expect("t1");
    }
    let t3 = a.issuer("t3").await.expect("the idle tenant's slot");
    assert!(t3.first);
    assert_eq!(a.held(), 2);
    assert!(a.cached("t2").await.is_none(), "t2 left");
    let t1_again = a.issuer("t1").await.expect("t1");
    assert!(
        !t1_again.first && Arc::ptr_eq(&t1_again.issuer, &t1.issuer),
        "the busy tenant was never evicted"
    );
    assert_eq!(idp.asked_for("t1"), ["t1 discovery", "t1 keys"]);
}

#[tokio::test]
async fn a_tenant_whose_first_fetch_fails_is_remembered_for_a_while_and_holds_no_slot() {
    let idp = Realms::start(&["acme"]).await;
    let sources = sources(Duration::from_secs(3600), Duration::from_millis(600));
    let policy = policy(
        &sources,
        "orders",
        &idp,
        "admitTenants: {expression: 'true', maxTenants: 2}",
    );
    let a = admission(&policy);
    let unknown = a
        .issuer("ghost")
        .await
        .expect_err("the realm does not exist");
    let AdmitError::Unavailable { detail, retry } = &unknown else {
        panic!("{unknown:?}")
    };
    assert!(
        detail.contains("/realms/ghost/.well-known/openid-configuration")
            && detail.contains("HTTP 404"),
        "{detail}"
    );
    assert_eq!(retry, "600ms");
    assert_eq!(a.held(), 0, "a failed tenant holds no slot");
    for _ in 0..5 {
        assert_eq!(a.issuer("ghost").await.expect_err("remembered"), unknown);
    }
    assert_eq!(
        idp.asked_for("ghost"),
        ["ghost discovery"],
        "nothing fetched while it is remembered"
    );
    a.issuer("acme").await.expect("acme");
    assert_eq!(a.held(), 1);

    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(matches!(
        a.issuer("ghost").await,
        Err(AdmitError::Unavailable { .. })
    ));
    assert_eq!(
        idp.asked_for("ghost"),
        ["ghost discovery", "ghost discovery"],
        "asked again once the negative TTL passed"
    );
    assert_eq!(a.held(), 1);
}

#[tokio::test]
async fn concurrent_first_uses_of_a_tenant_fetch_once() {
    let idp = Realms::start(&["acme"]).await;
    idp.slow_discovery(300);
    let sources = sources(Duration::from_secs(3600), Duration::from_secs(30));
    let policy = policy(
        &sources,
        "orders",
        &idp,
        "admitTenants: {expression: 'true'}",
    );
    let a = admission(&policy);
    let all = futures_util::future::join_all((0..16).map(|_| a.issuer("acme"))).await;
    let issuers: Vec<Admitted> = all.into_iter().map(|r| r.expect("admitted")).collect();
    assert!(
        issuers
            .iter()
            .all(|i| Arc::ptr_eq(&i.issuer, &issuers[0].issuer))
    );
    assert_eq!(idp.asked_for("acme"), ["acme discovery", "acme keys"]);
    assert_eq!(a.held(), 1);
}

#[tokio::test]
async fn a_tenant_is_one_key_source_across_policies_and_tenants_share_none() {
    let idp = Realms::start(&["acme", "globex"]).await;
    let sources = sources(Duration::from_secs(3600), Duration::from_secs(30));
    let orders = policy(
        &sources,
        "orders",
        &idp,
        "admitTenants: {expression: 'true'}",
    );
    let invoices = policy(
        &sources,
        "invoices",
        &idp,
        "admitTenants: {expression: \"tenant != 'globex'\"}",
    );
    let in_orders = admission(&orders).issuer("acme").await.expect("acme");
    let in_invoices = admission(&invoices).issuer("acme").await.expect("acme");
    assert!(in_invoices.first, "each policy admits for itself");
    assert!(
        Arc::ptr_eq(&in_orders.issuer.keys, &in_invoices.issuer.keys),
        "one key source for the tenant's URL"
    );
    assert_eq!(
        idp.asked_for("acme"),
        ["acme discovery", "acme keys"],
        "fetched once for both policies"
    );
    // A policy listing the tenant uses the same source.
    let listing = compile_with(
        &sources,
        "shop",
        "listing",
        &spec(&format!(
            "issuers: [{{issuer: '{}/realms/{{tenant}}', tenants: [acme], audiences: [a], allowInsecureHttp: true}}]",
            idp.base
        )),
    )
    .expect("compiles");
    assert!(Arc::ptr_eq(
        &listing.issuers[0].keys,
        &in_orders.issuer.keys
    ));

    // Another tenant: its own issuer, URL, source and keys.
    let globex = admission(&orders).issuer("globex").await.expect("globex");
    assert!(!Arc::ptr_eq(&globex.issuer.keys, &in_orders.issuer.keys));
    assert_eq!(globex.issuer.issuer, idp.issuer("globex"));
    let kids = |admitted: &Admitted| -> Vec<Option<String>> {
        let keys = admitted.issuer.keys.current().expect("keys");
        keys.keys().iter().map(|k| k.kid.clone()).collect()
    };
    assert_eq!(kids(&globex), [Some("globex".to_string())]);
    assert_eq!(kids(&in_orders), [Some("acme".to_string())]);
    assert_eq!(idp.asked_for("globex"), ["globex discovery", "globex keys"]);
}

#[tokio::test]
async fn offline_a_tenant_is_admitted_without_fetching() {
    let idp = Realms::start(&["acme"]).await;
    let sources = KeySources::offline().expect("client");
    let policy = policy(
        &sources,
        "orders",
        &idp,
        "admitTenants: {expression: 'true'}",
    );
    let admitted = admission(&policy).issuer("acme").await.expect("acme");
    assert!(admitted.issuer.keys.current().is_none());
    assert_eq!(idp.asked(), Vec::<String>::new());
}

#[tokio::test]
async fn a_first_use_outlives_the_request_that_started_it() {
    let idp = Realms::start(&["acme"]).await;
    idp.slow_discovery(300);
    let sources = sources(Duration::from_secs(3600), Duration::from_secs(30));
    let policy = policy(
        &sources,
        "orders",
        &idp,
        "admitTenants: {expression: 'true', maxTenants: 2}",
    );
    let a = admission(&policy);
    // The proxy gives up on both requests while their tenants' discovery is answered.
    for tenant in ["ghost", "acme"] {
        let gave_up = tokio::time::timeout(Duration::from_millis(50), a.issuer(tenant)).await;
        assert!(gave_up.is_err(), "{tenant} answered within 50ms");
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Both first uses ended: acme holds a slot, ghost none and is remembered.
    assert_eq!(a.held(), 1);
    assert!(a.cached("acme").await.is_some());
    assert!(!a.issuer("acme").await.expect("acme").first);
    assert!(matches!(
        a.issuer("ghost").await,
        Err(AdmitError::Unavailable { .. })
    ));
    assert_eq!(idp.asked_for("acme"), ["acme discovery", "acme keys"]);
    assert_eq!(idp.asked_for("ghost"), ["ghost discovery"]);
}
