use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use kube::api::{ApiResource, ObjectMeta};
use kube::core::{DynamicObject, GroupVersionKind};
use serde_json::json;

use super::*;
use crate::engine::{self, Headers, Request};
use crate::fixtures::*;
use crate::local_issuer::SigningKey;
use crate::policy::DefaultAction;

fn api_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "tollgate.dev",
        "v1alpha1",
        "JwtPolicy",
    ))
}

/// A JwtPolicy as the API server would send it.
fn object(name: &str, generation: i64, created: &str, spec: serde_json::Value) -> DynamicObject {
    let mut object = DynamicObject::new(name, &api_resource()).data(json!({"spec": spec}));
    object.metadata = ObjectMeta {
        name: Some(name.into()),
        namespace: Some("shop".into()),
        generation: Some(generation),
        creation_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            created.parse().expect("timestamp"),
        )),
        ..ObjectMeta::default()
    };
    object
}

fn spec(host: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({
        "match": {"hosts": [host]},
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": trusted_jwks()}],
    });
    for (k, v) in extra.as_object().expect("object") {
        spec[k] = v.clone();
    }
    spec
}

fn secret(name: &str, key: &str, value: &[u8]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            key.to_string(),
            ByteString(value.to_vec()),
        )])),
        ..Secret::default()
    }
}

fn index() -> PolicyIndex {
    PolicyIndex::new(
        KeySources::offline().expect("client"),
        DefaultAction::Deny,
        vec![None],
    )
}

fn key(name: &str) -> SecretKey {
    ("shop".to_string(), name.to_string())
}

fn synced_index() -> PolicyIndex {
    let mut index = index();
    index.apply(Change::Policy(None, watcher::Event::Init));
    index.apply(Change::Policy(None, watcher::Event::InitDone));
    index
}

fn serving(index: &PolicyIndex) -> Vec<String> {
    let (snapshot, _) = index.snapshot();
    let mut ids: Vec<String> = snapshot.policies().map(|p| p.id.to_string()).collect();
    ids.sort();
    ids
}

const T0: &str = "2026-11-01T00:00:00Z";
const T1: &str = "2026-11-02T00:00:00Z";

#[test]
fn a_relist_replaces_the_whole_set_at_once() {
    let mut index = index();
    assert!(!index.apply(Change::Policy(None, watcher::Event::Init)));
    assert!(!index.apply(Change::Policy(
        None,
        watcher::Event::InitApply(object("a", 1, T0, spec("a.example", json!({}))))
    )));
    assert!(
        !index.synced(),
        "nothing is served before the first list is complete"
    );
    assert!(!index.apply(Change::Policy(
        None,
        watcher::Event::InitApply(object("b", 1, T0, spec("b.example", json!({}))))
    )));
    assert!(index.apply(Change::Policy(None, watcher::Event::InitDone)));
    assert!(index.synced());
    assert_eq!(serving(&index), ["shop/a", "shop/b"]);

    // The watch restarts; while relisting, the old set stays whole.
    index.apply(Change::Policy(None, watcher::Event::Init));
    index.apply(Change::Policy(
        None,
        watcher::Event::InitApply(object("b", 1, T0, spec("b.example", json!({})))),
    ));
    assert_eq!(serving(&index), ["shop/a", "shop/b"]);
    index.apply(Change::Policy(None, watcher::Event::InitDone));
    assert_eq!(
        serving(&index),
        ["shop/b"],
        "a vanished while the watch was down"
    );
}

#[test]
fn updates_deletes_and_last_good_versions() {
    let mut index = synced_index();
    index.apply(Change::Policy(
        None,
        watcher::Event::Apply(object(
            "a",
            1,
            T0,
            spec("a.example", json!({"clockSkew": "10s"})),
        )),
    ));
    let state = &index.policies["shop/a"];
    assert!(state.current());
    assert_eq!(state.compiled.as_ref().expect("compiled").clock_skew, 10);

    // Generation 2 does not compile: generation 1 keeps serving, the error is recorded.
    index.apply(Change::Policy(
        None,
        watcher::Event::Apply(object(
            "a",
            2,
            T0,
            spec("a.example", json!({"deny": {"status": 200}})),
        )),
    ));
    let state = &index.policies["shop/a"];
    assert!(!state.current());
    assert_eq!(state.compiled_generation, Some(1));
    assert_eq!(state.error.as_ref().expect("error").reason(), "InvalidSpec");
    assert_eq!(serving(&index), ["shop/a"]);

    // Generation 3 fixes it.
    index.apply(Change::Policy(
        None,
        watcher::Event::Apply(object(
            "a",
            3,
            T0,
            spec("a.example", json!({"clockSkew": "20s"})),
        )),
    ));
    assert!(index.policies["shop/a"].current());
    assert_eq!(
        index.snapshot().0.policy("shop/a").expect("a").clock_skew,
        20
    );

    assert!(index.apply(Change::Policy(
        None,
        watcher::Event::Delete(object("a", 3, T0, json!({})))
    )));
    assert!(
        serving(&index).is_empty(),
        "a deleted policy stops matching at once"
    );
}

#[test]
fn an_object_that_does_not_parse_is_skipped_not_fatal() {
    let mut index = synced_index();
    index.apply(Change::Policy(
        None,
        watcher::Event::Apply(object("good", 1, T0, spec("good.example", json!({})))),
    ));
    index.apply(Change::Policy(
        None,
        watcher::Event::Apply(object("bad", 1, T0, json!({"issuers": "not a list"}))),
    ));
    assert_eq!(serving(&index), ["shop/good"]);
    let error = index.policies["shop/bad"]
        .error
        .as_ref()
        .expect("error")
        .to_string();
    assert!(error.contains("not a valid JwtPolicy"), "{error}");
}

#[test]
fn the_older_policy_keeps_a_contested_host() {
    let mut index = synced_index();
    index.apply(Change::Policy(
        None,
        watcher::Event::Apply(object("newer", 1, T1, spec("api.example", json!({})))),
    ));
    index.apply(Change::Policy(
        None,
        watcher::Event::Apply(object("older", 1, T0, spec("api.example", json!({})))),
    ));
    let (snapshot, conflicts) = index.snapshot();
    assert_eq!(
        snapshot
            .select("api.example", "/", "GET", false)
            .map(|p| &*p.id),
        Some("shop/older")
    );
    assert_eq!(conflicts.len(), 1);
    assert_eq!(&*conflicts[0].policy, "shop/newer");
}

async fn allowed(index: &PolicyIndex, token: &str) -> bool {
    let (snapshot, _) = index.snapshot();
    let headers = vec![("authorization".to_string(), format!("Bearer {token}"))];
    let request = Request {
        host: "h.example",
        path: "/",
        method: "GET",
        headers: Headers::List(&headers),
        policy: None,
        route: None,
        source: Default::default(),
    };
    engine::check(&snapshot, &request, SystemTime::now())
        .await
        .is_allow()
}

#[tokio::test]
async fn secrets_are_resolved_and_rotation_recompiles_the_policy() {
    let mut index = synced_index();
    let hmac = json!({"issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "sharedSecret": {"secretRef": {"name": "hmac", "key": "k"}}}]});
    index.apply(Change::Policy(
        None,
        watcher::Event::Apply(object("h", 1, T0, spec("h.example", hmac))),
    ));
    assert_eq!(
        index.policies["shop/h"]
            .error
            .as_ref()
            .expect("missing")
            .reason(),
        "SecretNotFound"
    );
    assert_eq!(
        index.referenced_secrets(),
        BTreeSet::from([("shop".to_string(), "hmac".to_string())])
    );

    assert!(!index.synced(), "a referenced Secret has not reported yet");
    let old = [1u8; 32];
    let new = [2u8; 32];
    index.apply(Change::Secret(key("hmac"), watcher::Event::Init));
    index.apply(Change::Secret(
        key("hmac"),
        watcher::Event::InitApply(secret("hmac", "k", &old)),
    ));
    assert!(index.apply(Change::Secret(key("hmac"), watcher::Event::InitDone)));
    assert!(index.synced());
    assert!(index.policies["shop/h"].current());
    let old_token = SigningKey::hmac("h", "HS256", &old)
        .mint(&good_claims())
        .expect("mint");
    let new_token = SigningKey::hmac("h", "HS256", &new)
        .mint(&good_claims())
        .expect("mint");
    assert!(allowed(&index, &old_token).await);

    // An unrelated Secret changes nothing.
    assert!(!index.apply(Change::Secret(
        key("other"),
        watcher::Event::Apply(secret("other", "k", &new))
    )));
    // The same data again changes nothing.
    assert!(!index.apply(Change::Secret(
        key("hmac"),
        watcher::Event::Apply(secret("hmac", "k", &old))
    )));
    // Rotation.
    assert!(index.apply(Change::Secret(
        key("hmac"),
        watcher::Event::Apply(secret("hmac", "k", &new))
    )));
    assert!(allowed(&index, &new_token).await);
    assert!(!allowed(&index, &old_token).await);
    // Deleting the Secret keeps the last good version and reports it.
    index.apply(Change::Secret(
        key("hmac"),
        watcher::Event::Delete(secret("hmac", "k", &new)),
    ));
    assert_eq!(
        index.policies["shop/h"]
            .error
            .as_ref()
            .expect("missing")
            .reason(),
        "SecretNotFound"
    );
    assert!(allowed(&index, &new_token).await);
}

fn config_map(name: &str, key: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(key.to_string(), value.to_string())])),
        ..ConfigMap::default()
    }
}

/// Issuer keys from a ConfigMap (PEM) and from a Secret (JWKS): the policy waits for both
/// watches, and a rotation in either recompiles it.
#[tokio::test]
async fn issuer_keys_from_a_config_map_or_a_secret_follow_rotation() {
    let mut index = synced_index();
    let from = json!({"issuers": [
        {"issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["ES256", "RS256"],
         "keysFrom": {"configMapRef": {"name": "idp-keys", "key": "keys.pem"}}},
    ]});
    index.apply(Change::Policy(
        None,
        watcher::Event::Apply(object("h", 1, T0, spec("h.example", from))),
    ));
    assert_eq!(
        index.referenced_config_maps(),
        BTreeSet::from([key("idp-keys")])
    );
    assert!(index.referenced_secrets().is_empty());
    assert!(
        !index.synced(),
        "a referenced ConfigMap has not reported yet"
    );
    let ec_token = EC.mint(&good_claims()).expect("mint");
    let rsa_token = RSA.mint(&good_claims()).expect("mint");
    index.apply(Change::ConfigMap(key("idp-keys"), watcher::Event::Init));
    index.apply(Change::ConfigMap(
        key("idp-keys"),
        watcher::Event::InitApply(config_map(
            "idp-keys",
            "keys.pem",
            &EC.public_pem().expect("pem"),
        )),
    ));
    assert!(index.apply(Change::ConfigMap(key("idp-keys"), watcher::Event::InitDone)));
    assert!(index.synced());
    assert!(allowed(&index, &ec_token).await);
    assert!(!allowed(&index, &rsa_token).await);

    // A Secret of the same name is another object: nothing recompiles.
    assert!(!index.apply(Change::Secret(
        key("idp-keys"),
        watcher::Event::Apply(secret("idp-keys", "keys.pem", b"x"))
    )));
    // Rotation to the RSA key.
    assert!(index.apply(Change::ConfigMap(
        key("idp-keys"),
        watcher::Event::Apply(config_map(
            "idp-keys",
            "keys.pem",
            &RSA.public_pem().expect("pem"),
        )),
    )));
    assert!(allowed(&index, &rsa_token).await);
    assert!(!allowed(&index, &ec_token).await);
    // A private key stored by mistake is refused; the last good keys keep serving.
    assert!(index.apply(Change::ConfigMap(
        key("idp-keys"),
        watcher::Event::Apply(config_map(
            "idp-keys",
            "keys.pem",
            "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n",
        )),
    )));
    let error = index.policies["shop/h"].error.as_ref().expect("refused");
    assert!(error.to_string().contains("private key"), "{error}");
    assert!(allowed(&index, &rsa_token).await);

    // The same issuer's keys from a Secret holding a JWKS.
    let from_secret = json!({"issuers": [
        {"issuer": ISSUER, "audiences": [AUDIENCE],
         "keysFrom": {"secretRef": {"name": "idp-jwks", "key": "jwks.json"}}},
    ]});
    index.apply(Change::Policy(
        None,
        watcher::Event::Apply(object("h", 2, T0, spec("h.example", from_secret))),
    ));
    assert!(index.referenced_config_maps().is_empty());
    index.forget_unreferenced_secrets();
    let jwks = crate::local_issuer::jwks(&[&EC]).to_string();
    assert!(index.apply(Change::Secret(
        key("idp-jwks"),
        watcher::Event::Apply(secret("idp-jwks", "jwks.json", jwks.as_bytes()))
    )));
    assert!(index.policies["shop/h"].current());
    assert!(allowed(&index, &ec_token).await);
    assert!(!allowed(&index, &rsa_token).await);
}

#[tokio::test]
async fn decryption_keys_and_the_trace_secret_come_from_secrets() {
    use crate::jwe::{self, ContentEncryption, KeyManagement};
    let mut index = synced_index();
    let extra = json!({
        "decryption": {"keys": [{"secretRef": {"name": "token-keys", "key": "jwk"}}]},
        "debug": {"traceHeader": {"value": {"secretRef": {"name": "debug", "key": "value"}}}},
    });
    index.apply(Change::Policy(
        None,
        watcher::Event::Apply(object("enc", 1, T0, spec("h.example", extra))),
    ));
    assert_eq!(
        index.referenced_secrets(),
        BTreeSet::from([
            ("shop".to_string(), "debug".to_string()),
            ("shop".to_string(), "token-keys".to_string())
        ])
    );
    let jwk =
        json!({"kty": "oct", "kid": "enc-1", "k": "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA"});
    for (name, key_name, value) in [
        ("token-keys", "jwk", jwk.to_string().into_bytes()),
        ("debug", "value", b"a-long-enough-debug-secret".to_vec()),
    ] {
        index.apply(Change::Secret(key(name), watcher::Event::Init));
        index.apply(Change::Secret(
            key(name),
            watcher::Event::InitApply(secret(name, key_name, &value)),
        ));
        index.apply(Change::Secret(key(name), watcher::Event::InitDone));
    }
    assert!(index.synced());
    assert!(
        index.policies["shop/enc"].current(),
        "{:?}",
        index.policies["shop/enc"].error
    );
    let public = jwe::parse_keys(jwk.to_string().as_bytes()).expect("key")[0]
        .public()
        .expect("public");
    let nested = jwe::encrypt(
        RSA.mint(&good_claims()).expect("mint").as_bytes(),
        &public,
        KeyManagement::A256Kw,
        ContentEncryption::A256Gcm,
        Some("JWT"),
    )
    .expect("encrypt");
    assert!(allowed(&index, &nested).await);
}

#[tokio::test]
async fn the_task_coalesces_bursts_and_publishes_only_after_the_first_list() {
    let shared = SharedSnapshot::new(DefaultAction::Deny);
    let (tx, rx) = mpsc::channel(1024);
    let (task, view) = spawn_index(index(), shared.clone(), rx, |_| {});
    let mut published = shared.subscribe();
    tx.send(Change::Policy(None, watcher::Event::Init))
        .await
        .expect("send");
    tx.send(Change::Policy(
        None,
        watcher::Event::InitApply(object("a", 1, T0, spec("a.example", json!({})))),
    ))
    .await
    .expect("send");
    tx.send(Change::Policy(None, watcher::Event::InitDone))
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        *published.borrow_and_update(),
        1,
        "the first complete list is published"
    );

    // A burst: 200 updates arrive together.
    let mut burst = Vec::new();
    for generation in 2..202 {
        let skew = format!("{}s", generation % 60);
        burst.push(Change::Policy(
            None,
            watcher::Event::Apply(object(
                "a",
                generation,
                T0,
                spec("a.example", json!({"clockSkew": skew})),
            )),
        ));
    }
    for change in burst {
        tx.send(change).await.expect("send");
    }
    drop(tx);
    let index = task.await.expect("index task");
    let generations = *published.borrow_and_update();
    assert!(
        (2..20).contains(&generations),
        "{generations} snapshots for one burst"
    );
    assert_eq!(
        shared.load().policy("shop/a").expect("a").clock_skew,
        201 % 60
    );
    assert_eq!(index.policies["shop/a"].generation, 201);
    assert_eq!(
        view.borrow().loaded(),
        BTreeMap::from([("shop/a".to_string(), 201)])
    );
}

#[test]
fn namespace_scopes_relist_independently() {
    let scopes = vec![Some("shop".to_string()), Some("billing".to_string())];
    let mut index = PolicyIndex::new(
        KeySources::offline().expect("client"),
        DefaultAction::Deny,
        scopes.clone(),
    );
    let mut billing = object("b", 1, T0, spec("b.example", json!({})));
    billing.metadata.namespace = Some("billing".into());
    index.apply(Change::Policy(scopes[0].clone(), watcher::Event::Init));
    index.apply(Change::Policy(
        scopes[0].clone(),
        watcher::Event::InitApply(object("a", 1, T0, spec("a.example", json!({})))),
    ));
    index.apply(Change::Policy(scopes[0].clone(), watcher::Event::InitDone));
    assert!(!index.synced(), "billing has not listed yet");
    index.apply(Change::Policy(scopes[1].clone(), watcher::Event::Init));
    index.apply(Change::Policy(
        scopes[1].clone(),
        watcher::Event::InitApply(billing),
    ));
    index.apply(Change::Policy(scopes[1].clone(), watcher::Event::InitDone));
    assert!(index.synced());
    assert_eq!(serving(&index), ["billing/b", "shop/a"]);
    // A relist of shop alone leaves billing's policies alone.
    index.apply(Change::Policy(scopes[0].clone(), watcher::Event::Init));
    index.apply(Change::Policy(scopes[0].clone(), watcher::Event::InitDone));
    assert_eq!(serving(&index), ["billing/b"]);
}

#[test]
fn an_update_without_a_spec_change_recompiles_nothing() {
    let mut index = synced_index();
    let mut first = object("a", 1, T0, spec("a.example", json!({})));
    assert!(index.apply(Change::Policy(None, watcher::Event::Apply(first.clone()))));
    let compiled = index.policies["shop/a"].compiled.clone().expect("compiled");
    // A status write: same generation and spec, new resourceVersion and status.
    first.metadata.resource_version = Some("99".into());
    first.data["status"] = json!({"loaded": "3/3"});
    assert!(!index.apply(Change::Policy(None, watcher::Event::Apply(first))));
    assert!(Arc::ptr_eq(
        &compiled,
        index.policies["shop/a"]
            .compiled
            .as_ref()
            .expect("compiled")
    ));
}

fn gateway_object(
    kind: GatewayKind,
    namespace: &str,
    name: &str,
    created: &str,
    spec: serde_json::Value,
) -> DynamicObject {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "gateway.networking.k8s.io",
        "v1",
        kind.kind(),
    ));
    let mut object = DynamicObject::new(name, &resource).data(json!({"spec": spec}));
    object.metadata = ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        generation: Some(1),
        creation_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            created.parse().expect("timestamp"),
        )),
        ..ObjectMeta::default()
    };
    object
}

fn targeted_spec(route: &str) -> serde_json::Value {
    json!({
        "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": route}],
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": trusted_jwks()}],
    })
}

fn orders_route(path_type: &str, path: &str) -> DynamicObject {
    gateway_object(
        GatewayKind::HttpRoute,
        "shop",
        "orders",
        T0,
        json!({
            "parentRefs": [{"name": "eg"}],
            "hostnames": ["api.example.com"],
            "rules": [{"matches": [{"path": {"type": path_type, "value": path}}]}],
        }),
    )
}

fn selected_route(index: &PolicyIndex, host: &str, path: &str) -> Option<String> {
    let (snapshot, _) = index.snapshot();
    snapshot
        .select_with(host, path, "GET", false, &Default::default())
        .map(|p| p.policy.id.to_string())
}

fn list_gateway_api(
    index: &mut PolicyIndex,
    routes: Vec<DynamicObject>,
    gateways: Vec<DynamicObject>,
) {
    for (kind, objects) in [
        (GatewayKind::HttpRoute, routes),
        (GatewayKind::Gateway, gateways),
    ] {
        index.apply(Change::Gateway(0, kind, None, watcher::Event::Init));
        for object in objects {
            index.apply(Change::Gateway(
                0,
                kind,
                None,
                watcher::Event::InitApply(object),
            ));
        }
        index.apply(Change::Gateway(0, kind, None, watcher::Event::InitDone));
    }
}

#[test]
fn a_policy_attached_to_a_route_judges_its_requests_and_follows_its_edits() {
    let mut index = synced_index();
    index.apply(Change::Policy(
        None,
        watcher::Event::Apply(object("p", 1, T0, targeted_spec("orders"))),
    ));
    assert!(index.wants_gateway_api());
    assert!(
        !index.synced(),
        "nothing is published before the routes and Gateways are listed"
    );
    let gateway = gateway_object(
        GatewayKind::Gateway,
        "shop",
        "eg",
        T0,
        json!({"listeners": [{"name": "http", "protocol": "HTTP", "port": 80}]}),
    );
    list_gateway_api(
        &mut index,
        vec![orders_route("PathPrefix", "/orders")],
        vec![gateway],
    );
    assert!(index.synced());
    assert_eq!(
        selected_route(&index, "api.example.com", "/orders/1").as_deref(),
        Some("shop/p")
    );
    assert_eq!(selected_route(&index, "api.example.com", "/cart"), None);
    assert_eq!(selected_route(&index, "other.example.com", "/orders"), None);

    // The route is edited: the policy follows, without a new generation of its own.
    assert!(index.apply(Change::Gateway(
        0,
        GatewayKind::HttpRoute,
        None,
        watcher::Event::Apply(orders_route("Exact", "/cart")),
    )));
    assert_eq!(selected_route(&index, "api.example.com", "/orders/1"), None);
    assert_eq!(
        selected_route(&index, "api.example.com", "/cart").as_deref(),
        Some("shop/p")
    );
    assert_eq!(selected_route(&index, "api.example.com", "/cart/1"), None);

    // A match tollgate cannot judge: not accepted, the last good entries keep serving.
    index.apply(Change::Gateway(
        0,
        GatewayKind::HttpRoute,
        None,
        watcher::Event::Apply(orders_route("RegularExpression", "/c.*")),
    ));
    let view = index.view(&[]);
    let policy = &view.policies[0];
    let error = policy.error.as_ref().expect("not accepted");
    assert_eq!(error.reason(), "UnsupportedRouteMatch");
    assert!(error.to_string().contains("RegularExpression"), "{error}");
    assert_eq!(
        selected_route(&index, "api.example.com", "/cart").as_deref(),
        Some("shop/p")
    );

    // The route is deleted: the policy judges nothing, and holds no host.
    index.apply(Change::Gateway(
        0,
        GatewayKind::HttpRoute,
        None,
        watcher::Event::Delete(orders_route("Exact", "/cart")),
    ));
    assert_eq!(selected_route(&index, "api.example.com", "/cart"), None);
    let view = index.view(&[]);
    assert!(view.policies[0].error.is_none());
    assert!(view.policies[0].hosts.is_empty());
    assert_eq!(
        view.policies[0].ancestors[0]
            .accepted
            .clone()
            .expect_err("gone")
            .0,
        "TargetNotFound"
    );
}

#[test]
fn without_gateway_api_the_other_policies_still_publish() {
    let mut index = synced_index();
    index.apply(Change::Policy(
        None,
        watcher::Event::Apply(object("plain", 1, T0, spec("plain.example", json!({})))),
    ));
    index.apply(Change::Policy(
        None,
        watcher::Event::Apply(object("p", 1, T1, targeted_spec("orders"))),
    ));
    // What the watch sends when the API server does not serve the kinds: an empty list.
    list_gateway_api(&mut index, Vec::new(), Vec::new());
    assert!(index.synced());
    assert_eq!(
        selected_route(&index, "plain.example", "/").as_deref(),
        Some("shop/plain")
    );
    // The targeting policy claims no host: not even `*`.
    assert_eq!(selected_route(&index, "any.example", "/"), None);
}

#[test]
fn events_of_stopped_route_watches_are_dropped_and_a_late_targeting_policy_blocks_nothing() {
    let mut index = synced_index();
    index.apply(Change::Policy(
        None,
        watcher::Event::Apply(object("plain", 1, T0, spec("plain.example", json!({})))),
    ));
    assert!(index.synced());
    index.mark_published();
    // A policy starts targeting routes after the first publish: the others keep publishing
    // while the route watches list.
    index.apply(Change::Policy(
        None,
        watcher::Event::Apply(object("p", 1, T1, targeted_spec("orders"))),
    ));
    assert!(index.synced());
    index.follow_gateway_watches(2);
    // An event queued by the watches started before (generation 1) changes nothing.
    assert!(!index.apply(Change::Gateway(
        1,
        GatewayKind::HttpRoute,
        None,
        watcher::Event::Apply(orders_route("PathPrefix", "/orders")),
    )));
    assert_eq!(selected_route(&index, "api.example.com", "/orders"), None);
}

fn key_secret(name: &str, key: &str, owner: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            labels: Some(BTreeMap::from([(
                "tollgate.dev/api-key".to_string(),
                "orders".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([
            ("key".to_string(), ByteString(key.as_bytes().to_vec())),
            ("owner".to_string(), ByteString(owner.as_bytes().to_vec())),
        ])),
        ..Secret::default()
    }
}

async fn key_allowed(index: &PolicyIndex, key: &str) -> bool {
    let (snapshot, _) = index.snapshot();
    let headers = vec![("x-api-key".to_string(), key.to_string())];
    let request = Request {
        host: "k.example",
        path: "/",
        method: "GET",
        headers: Headers::List(&headers),
        policy: None,
        route: None,
        source: Default::default(),
    };
    engine::check(&snapshot, &request, SystemTime::now())
        .await
        .is_allow()
}

#[tokio::test]
async fn api_key_secrets_are_selected_by_label_and_follow_their_watch() {
    const ACME: &str = "acme-0123456789abcdef0123456789abcdef";
    const GLOBEX: &str = "globex-0123456789abcdef0123456789abcdef";
    let mut index = synced_index();
    let keys = json!({"match": {"hosts": ["k.example"]},
        "apiKeys": {"secretSelector": {"matchLabels": {"tollgate.dev/api-key": "orders"}}}});
    index.apply(Change::Policy(
        None,
        watcher::Event::Apply(object("k", 1, T0, keys)),
    ));
    let selector = (
        "shop".to_string(),
        "tollgate.dev/api-key=orders".to_string(),
    );
    assert_eq!(
        index.referenced_selectors(),
        BTreeSet::from([selector.clone()])
    );
    assert!(!index.synced(), "the selector's watch has not listed yet");
    assert_eq!(
        index.policies["shop/k"]
            .error
            .as_ref()
            .expect("not listed")
            .reason(),
        "SecretNotFound"
    );

    index.apply(Change::Selected(selector.clone(), watcher::Event::Init));
    index.apply(Change::Selected(
        selector.clone(),
        watcher::Event::InitApply(key_secret("acme", ACME, "acme")),
    ));
    assert!(index.apply(Change::Selected(selector.clone(), watcher::Event::InitDone)));
    assert!(index.synced());
    assert!(index.policies["shop/k"].current());
    assert!(key_allowed(&index, ACME).await);
    assert!(!key_allowed(&index, GLOBEX).await);

    // A key Secret added: accepted; removed: refused.
    assert!(index.apply(Change::Selected(
        selector.clone(),
        watcher::Event::Apply(key_secret("globex", GLOBEX, "globex")),
    )));
    assert!(key_allowed(&index, GLOBEX).await);
    assert!(index.apply(Change::Selected(
        selector.clone(),
        watcher::Event::Delete(key_secret("acme", ACME, "acme")),
    )));
    assert!(!key_allowed(&index, ACME).await);
    assert!(key_allowed(&index, GLOBEX).await);

    // A Secret that is not a usable key fails the policy; the last good keys keep serving.
    index.apply(Change::Selected(
        selector.clone(),
        watcher::Event::Apply(key_secret("short", "too-short", "x")),
    ));
    assert!(!index.policies["shop/k"].current());
    let error = index.policies["shop/k"]
        .error
        .as_ref()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("Secret shop/short") && error.contains("at least 32"),
        "{error}"
    );
    assert!(!error.contains("too-short"), "{error}");
    assert!(key_allowed(&index, GLOBEX).await);

    // The policy gone, its selector is forgotten.
    index.apply(Change::Policy(
        None,
        watcher::Event::Delete(object("k", 1, T0, json!({}))),
    ));
    index.forget_unreferenced_secrets();
    assert!(index.referenced_selectors().is_empty());
}

/// A CA bundle in a ConfigMap: referenced and watched like keys, and a new bundle recompiles
/// the policy onto a key source under the new trust.
#[test]
fn a_ca_bundle_from_a_config_map_is_watched() {
    let mut index = synced_index();
    let with_bundle = json!({"issuers": [
        {"issuer": ISSUER, "audiences": [AUDIENCE], "jwksUri": "https://idp.example.com/keys",
         "caBundle": {"configMapRef": {"name": "idp-ca", "key": "ca.crt"}}},
    ]});
    index.apply(Change::Policy(
        None,
        watcher::Event::Apply(object("h", 1, T0, spec("h.example", with_bundle))),
    ));
    assert_eq!(
        index.referenced_config_maps(),
        BTreeSet::from([key("idp-ca")])
    );
    assert!(!index.synced());
    let ca = |_: ()| {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .self_signed(&rcgen::KeyPair::generate().expect("key"))
            .expect("CA")
            .pem()
    };
    assert!(index.apply(Change::ConfigMap(
        key("idp-ca"),
        watcher::Event::Apply(config_map("idp-ca", "ca.crt", &ca(()))),
    )));
    assert!(index.synced());
    assert!(index.policies["shop/h"].current());
    let source = |index: &PolicyIndex| {
        index.policies["shop/h"]
            .base
            .as_ref()
            .expect("compiled")
            .issuers[0]
            .keys
            .clone()
    };
    let first = source(&index);
    assert!(index.apply(Change::ConfigMap(
        key("idp-ca"),
        watcher::Event::Apply(config_map("idp-ca", "ca.crt", &ca(()))),
    )));
    assert!(
        !Arc::ptr_eq(&first, &source(&index)),
        "a new trust, a new source"
    );
    assert!(index.apply(Change::ConfigMap(
        key("idp-ca"),
        watcher::Event::Apply(config_map("idp-ca", "ca.crt", "not a certificate")),
    )));
    let error = index.policies["shop/h"].error.as_ref().expect("refused");
    assert!(error.to_string().contains("no PEM certificate"), "{error}");
}

#[tokio::test]
async fn the_dpop_nonce_secret_comes_from_a_secret_and_follows_it() {
    let mut index = synced_index();
    let extra = json!({
        "dpop": {"mode": "allowed",
            "nonce": {"secret": {"secretRef": {"name": "dpop-nonce", "key": "secret"}}}},
    });
    index.apply(Change::Policy(
        None,
        watcher::Event::Apply(object("dpop", 1, T0, spec("h.example", extra))),
    ));
    assert_eq!(
        index.referenced_secrets(),
        BTreeSet::from([("shop".to_string(), "dpop-nonce".to_string())])
    );
    let name = "dpop-nonce";
    index.apply(Change::Secret(key(name), watcher::Event::Init));
    index.apply(Change::Secret(
        key(name),
        watcher::Event::InitApply(secret(name, "secret", b"too short")),
    ));
    index.apply(Change::Secret(key(name), watcher::Event::InitDone));
    let error = index.policies["shop/dpop"]
        .error
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(
        error.contains("spec.dpop.nonce.secret") && error.contains("at least 32"),
        "{error}"
    );
    // A long enough secret, without a restart.
    index.apply(Change::Secret(
        key(name),
        watcher::Event::Apply(secret(name, "secret", b"0123456789abcdef0123456789abcdef")),
    ));
    assert!(
        index.policies["shop/dpop"].current(),
        "{:?}",
        index.policies["shop/dpop"].error
    );
}
