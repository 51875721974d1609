use serde_json::{Value, json};

use super::*;
use crate::controller::index::PolicyView;
use crate::fixtures::*;

fn admission(operation: &str, object: Value) -> AdmissionReview<DynamicObject> {
    serde_json::from_value(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "req-1",
            "kind": {"group": "tollgate.dev", "version": "v1alpha1", "kind": "JwtPolicy"},
            "resource": {"group": "tollgate.dev", "version": "v1alpha1", "resource": "jwtpolicies"},
            "operation": operation,
            "userInfo": {"username": "a-user"},
            "name": object["metadata"]["name"],
            "namespace": "shop",
            "object": object,
            "dryRun": false,
        }
    }))
    .expect("admission review")
}

fn policy(name: &str, created: Option<&str>, spec: Value) -> Value {
    let mut metadata = json!({"name": name, "namespace": "shop"});
    if let Some(created) = created {
        metadata["creationTimestamp"] = json!(created);
    }
    json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "JwtPolicy", "metadata": metadata, "spec": spec})
}

fn spec(host: &str) -> Value {
    json!({"match": {"hosts": [host]}, "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": trusted_jwks()}]})
}

/// What the replica serves: one policy for `api.example.com`, created at `created`.
fn serving(created: &str) -> IndexView {
    let policy = mk_policy("orders", "{match: {hosts: [api.example.com]}}");
    IndexView {
        policies: vec![PolicyView {
            id: "test/orders".into(),
            namespace: "test".into(),
            name: "orders".into(),
            uid: None,
            created: created.into(),
            generation: 1,
            serving_generation: Some(1),
            error: None,
            conflict: None,
            policy: Some(policy),
            status: None,
            hosts: Vec::new(),
            ancestors: Vec::new(),
            targeted: false,
        }],
        delegations: crate::policy::HostDelegations::none(),
    }
}

fn verdict(review: AdmissionReview<DynamicObject>) -> (bool, String) {
    let response = review.response.expect("response");
    assert_eq!(response.uid, "req-1");
    (response.allowed, response.result.message)
}

#[test]
fn admission_uses_the_same_compile_as_the_replicas() {
    let sources = KeySources::offline().expect("client");
    let view = serving("2026-01-01T00:00:00Z");
    let run = |op: &str, object: Value| verdict(review(admission(op, object), &view, &sources));

    assert_eq!(
        run(
            "CREATE",
            policy("billing", None, spec("billing.example.com"))
        ),
        (true, String::new())
    );

    let (allowed, message) = run(
        "CREATE",
        policy(
            "bad",
            None,
            json!({"issuers": [{"issuer": "https://idp/", "jwksUri": "http://idp/keys"}], "clockSkew": "1h"}),
        ),
    );
    assert!(!allowed);
    for fragment in [
        "spec.issuers[0].audiences",
        "spec.issuers[0].jwksUri",
        "spec.clockSkew",
    ] {
        assert!(message.contains(fragment), "{message}");
    }
    let (allowed, message) = run(
        "CREATE",
        policy("typo", None, json!({"issuers": [], "requiredClaim": []})),
    );
    assert!(
        !allowed && message.contains("not a valid JwtPolicy"),
        "{message}"
    );

    // Secrets: the reference is checked, the value is not needed yet.
    let hmac = json!({"issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "sharedSecret": {"secretRef": {"name": "later", "key": "k"}}}], "match": {"hosts": ["h.example.com"]}});
    assert!(run("CREATE", policy("hmac", None, hmac)).0);
    let file = json!({"issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "sharedSecret": {"file": "/x"}}], "match": {"hosts": ["h2.example.com"]}});
    let (allowed, message) = run("CREATE", policy("file", None, file));
    assert!(
        !allowed && message.contains("in Kubernetes use secretRef"),
        "{message}"
    );
    // Decryption keys and the trace secret: also only the reference is checked.
    let mut encrypted = spec("enc.example.com");
    encrypted["decryption"] =
        json!({"keys": [{"secretRef": {"name": "keys", "key": "pem"}, "kid": "k1"}]});
    encrypted["debug"] =
        json!({"traceHeader": {"value": {"secretRef": {"name": "debug", "key": "v"}}}});
    assert_eq!(
        run("CREATE", policy("encrypted", None, encrypted.clone())),
        (true, String::new())
    );
    encrypted["decryption"]["keys"][0]["algorithms"] = json!(["RSA1_5"]);
    let (allowed, message) = run("CREATE", policy("encrypted", None, encrypted));
    assert!(!allowed && message.contains("allowRsa1_5"), "{message}");

    assert!(
        run("DELETE", policy("anything", None, json!({}))).0,
        "deletes are never blocked"
    );
}

#[test]
fn host_conflicts_are_refused_for_the_newer_policy_only() {
    let sources = KeySources::offline().expect("client");
    let view = serving("2026-06-01T00:00:00Z");
    let (allowed, message) = verdict(review(
        admission("CREATE", policy("newcomer", None, spec("api.example.com"))),
        &view,
        &sources,
    ));
    assert!(!allowed);
    assert!(
        message.starts_with("HostConflict:")
            && message.contains("belongs to namespace test (test/orders is the oldest"),
        "{message}"
    );
    // An update of a policy older than the one serving the host: the older keeps it.
    let older = policy(
        "veteran",
        Some("2025-01-01T00:00:00Z"),
        spec("api.example.com"),
    );
    assert!(verdict(review(admission("UPDATE", older), &view, &sources)).0);
    // Updating the serving policy itself is not a conflict with itself.
    let mut itself = policy(
        "orders",
        Some("2026-06-01T00:00:00Z"),
        spec("api.example.com"),
    );
    itself["metadata"]["namespace"] = json!("test");
    assert!(verdict(review(admission("UPDATE", itself), &view, &sources)).0);
}

#[test]
fn other_kinds_are_refused() {
    let sources = KeySources::offline().expect("client");
    let mut req = serde_json::to_value(admission(
        "CREATE",
        policy("x", None, spec("x.example.com")),
    ))
    .expect("json");
    req["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "ConfigMap"});
    let review_in: AdmissionReview<DynamicObject> = serde_json::from_value(req).expect("review");
    let (allowed, message) = verdict(review(review_in, &IndexView::default(), &sources));
    assert!(
        !allowed && message.contains("JwtPolicy objects only"),
        "{message}"
    );
}

#[test]
fn delegations_and_warnings_reach_the_webhook_answer() {
    let sources = KeySources::offline().expect("client");
    // The serving policy (namespace test) is older, but the operator gave the host to shop.
    let mut view = serving("2025-01-01T00:00:00Z");
    view.delegations = Arc::new(
        crate::policy::HostDelegations::parse(
            "apiVersion: tollgate.dev/v1alpha1\nkind: HostDelegations\ndelegations: [{namespace: shop, hosts: [api.example.com]}]\n",
        )
        .expect("delegations"),
    );
    let (allowed, message) = verdict(review(
        admission("CREATE", policy("newcomer", None, spec("api.example.com"))),
        &view,
        &sources,
    ));
    assert!(allowed, "{message}");
    // A rule that can never apply: accepted, with a warning kubectl prints.
    let mut warned = spec("other.example.com");
    warned["match"]["paths"] = json!(["/orders"]);
    warned["rules"] = json!([{"paths": ["/billing"], "allowAnonymous": true}]);
    let answer = review(
        admission("CREATE", policy("warned", None, warned)),
        &view,
        &sources,
    );
    let response = answer.response.expect("response");
    assert!(response.allowed);
    let warnings = response.warnings.unwrap_or_default();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("spec.rules[0].paths[0]: /billing is outside match.paths"),
        "{warnings:?}"
    );
}

#[test]
fn a_failing_policy_attached_to_no_route_claims_no_host() {
    let sources = KeySources::offline().expect("client");
    // Another namespace's policy with targetRefs that does not compile and derived nothing.
    let mut view = serving("2026-01-01T00:00:00Z");
    view.policies[0] = PolicyView {
        id: "test/routed".into(),
        name: "routed".into(),
        policy: None,
        serving_generation: None,
        targeted: true,
        ..view.policies[0].clone()
    };
    let run = |object: Value| verdict(review(admission("CREATE", object), &view, &sources));
    // A policy for every host in namespace shop is not refused for it.
    assert_eq!(run(policy("all", None, spec("*"))), (true, String::new()));
    // An untargeted failing policy naming no host holds `*`: the same candidate is refused.
    view.policies[0].targeted = false;
    let run = |object: Value| verdict(review(admission("CREATE", object), &view, &sources));
    let (allowed, message) = run(policy("all", None, spec("*")));
    assert!(!allowed && message.contains("HostConflict"), "{message}");
}
