//! `tollgate explain` as a user runs it: exit codes, text and JSON output, the token from
//! standard input, keys fetched by discovery, and a policy read from the cluster.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};
use tollgate::jwe::{self, ContentEncryption, KeyManagement};
use tollgate::local_issuer::server::IdpServer;
use tollgate::local_issuer::{SigningKey, jwks};

use crate::cluster::Cluster;
use crate::support::*;

fn explain(args: &[&str], stdin: Option<&str>, envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command
        .arg("explain")
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("KUBECONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("run explain");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("explain output")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A policy file whose issuer's keys are written in it.
fn inline_policy(dir: &std::path::Path, key: &SigningKey) -> String {
    let yaml = format!(
        "apiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nmetadata: {{name: orders, namespace: shop}}\nspec:\n  match: {{hosts: [{HOST}], paths: [/orders]}}\n  issuers:\n  - issuer: https://idp.example.com/\n    audiences: [\"{AUDIENCE}\"]\n    jwks: {}\n",
        jwks(&[key])
    );
    write_policy(dir, "orders.yaml", &yaml)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn explain_exits_by_the_decision_in_text_and_json() {
    let key = SigningKey::rsa("k1", "RS256", 2048).expect("key");
    let dir = tempfile::tempdir().expect("dir");
    let policy = inline_policy(dir.path(), &key);
    let good = key
        .mint(&claims("https://idp.example.com/", json!({})))
        .expect("mint");
    let allowed = explain(&["--policy", &policy, "--token", &good], None, &[]);
    assert_eq!(allowed.status.code(), Some(0), "{}", text(&allowed));
    let out = String::from_utf8_lossy(&allowed.stdout);
    assert!(
        out.contains("✓ signature  verified with key \"k1\" (RSA-2048)"),
        "{out}"
    );
    assert!(out.ends_with("ALLOWED (valid)\n"), "{out}");
    assert!(!out.contains(&good), "the token is never printed");

    // Denied, from standard input, as JSON.
    let expired = key
        .mint(&claims(
            "https://idp.example.com/",
            json!({"exp": 1_000_000_000, "iat": 999_999_000}),
        ))
        .expect("mint");
    let denied = explain(
        &["--policy", &policy, "--token", "-", "--output", "json"],
        Some(&format!("{expired}\n")),
        &[],
    );
    assert_eq!(denied.status.code(), Some(1), "{}", text(&denied));
    let json: Value = serde_json::from_slice(&denied.stdout).expect("JSON output");
    assert_eq!(json["decision"], "deny");
    assert_eq!(json["reason"], "token_expired");
    assert_eq!(json["status"], 401);
    assert_eq!(json["policy"], "shop/orders");
    assert_eq!(json["claims"]["exp"], 1_000_000_000);
    let failed: Vec<&Value> = json["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s["outcome"] == "fail")
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["check"], "exp");
    assert!(
        failed[0]["fix"]
            .as_str()
            .expect("fix")
            .contains("spec.clockSkew")
    );

    // --at judges as if the clock said so: the same token was valid then.
    let then = explain(
        &[
            "--policy",
            &policy,
            "--token",
            &expired,
            "--at",
            "2001-09-09T01:45:00Z",
        ],
        None,
        &[],
    );
    assert_eq!(then.status.code(), Some(0), "{}", text(&then));
}

#[test]
fn usage_errors_exit_2_with_a_message() {
    let key = SigningKey::rsa("k1", "RS256", 2048).expect("key");
    let dir = tempfile::tempdir().expect("dir");
    let policy = inline_policy(dir.path(), &key);
    let bad_dir = tempfile::tempdir().expect("dir");
    let broken = write_policy(
        bad_dir.path(),
        "broken.yaml",
        "apiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nmetadata: {name: broken, namespace: shop}\nspec:\n  issuers: [{issuer: 'https://idp/', audiences: []}]\n",
    );
    for (args, stdin, expected) in [
        (
            vec!["--policy", "/nonexistent/policy.yaml"],
            None,
            "/nonexistent/policy.yaml does not exist",
        ),
        (
            vec!["--policy", broken.to_str().expect("utf-8")],
            None,
            "spec.issuers[0].audiences: list the audiences",
        ),
        (
            vec!["--policy", &policy, "--token", "-"],
            Some(""),
            "standard input holds no token",
        ),
        (vec!["--policy", &policy, "--at", "yesterday"], None, "--at"),
        (vec!["--token", "x"], None, "--policy"),
    ] {
        let out = explain(&args, stdin, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(expected), "{args:?}: {}", text(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_fetches_keys_by_discovery_unless_offline() {
    let key = SigningKey::ec("ec-1", "ES256").expect("key");
    let idp = IdpServer::start("127.0.0.1:0".parse().expect("addr"), jwks(&[&key]))
        .await
        .expect("idp");
    let iss = idp.issuer();
    let dir = tempfile::tempdir().expect("dir");
    let policy = write_policy(dir.path(), "p.yaml", &policy_yaml("orders", &iss, ""));
    let policy = policy.to_str().expect("utf-8").to_string();
    let token = key.mint(&claims(&iss, json!({}))).expect("mint");
    let online = {
        let (policy, token) = (policy.clone(), token.clone());
        tokio::task::spawn_blocking(move || {
            explain(&["--policy", &policy, "--token", &token], None, &[])
        })
        .await
        .expect("join")
    };
    assert_eq!(online.status.code(), Some(0), "{}", text(&online));
    assert!(String::from_utf8_lossy(&online.stdout).contains("✓ keys"));
    let offline = tokio::task::spawn_blocking(move || {
        explain(
            &["--policy", &policy, "--token", &token, "--offline"],
            None,
            &[],
        )
    })
    .await
    .expect("join");
    assert_eq!(offline.status.code(), Some(1), "{}", text(&offline));
    let out = String::from_utf8_lossy(&offline.stdout);
    assert!(out.contains("✓ aud"), "claims are still checked: {out}");
    assert!(out.contains("NOT VERIFIED 503 issuer_unavailable"), "{out}");
    idp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_reads_a_policy_and_its_secrets_from_the_cluster() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    cluster.install_crd();
    cluster.kubectl(&["create", "namespace", "shop"]);
    let signer = SigningKey::rsa("k1", "RS256", 2048).expect("key");
    // An encrypted-token policy whose decryption key is in a Secret.
    let aes =
        json!({"kty": "oct", "kid": "enc-1", "k": "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA"});
    cluster.apply(
        &json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "token-keys", "namespace": "shop"},
            "stringData": {"jwk": aes.to_string()},
        })
        .to_string(),
    );
    cluster.apply(
        &json!({
            "apiVersion": "tollgate.dev/v1alpha1", "kind": "JwtPolicy",
            "metadata": {"name": "orders", "namespace": "shop"},
            "spec": {
                "match": {"hosts": [HOST]},
                "issuers": [{"issuer": "https://idp.example.com/", "audiences": [AUDIENCE], "jwks": jwks(&[&signer])}],
                "decryption": {"keys": [{"secretRef": {"name": "token-keys", "key": "jwk"}}]},
            },
        })
        .to_string(),
    );
    let kubeconfig = cluster.kubeconfig.clone();
    let public = jwe::parse_keys(aes.to_string().as_bytes()).expect("key")[0]
        .public()
        .expect("public");
    let nested = jwe::encrypt(
        signer
            .mint(&claims("https://idp.example.com/", json!({})))
            .expect("mint")
            .as_bytes(),
        &public,
        KeyManagement::A256Kw,
        ContentEncryption::A128CbcHs256,
        Some("JWT"),
    )
    .expect("encrypt");
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let out = {
        let kubeconfig = kubeconfig.clone();
        tokio::task::spawn_blocking(move || {
            explain(
                &["--policy", "shop/orders", "--token", &nested],
                None,
                &[("KUBECONFIG", &kubeconfig)],
            )
        })
        .await
        .expect("join")
    };
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "✓ decrypt    JWE alg A256KW, enc A128CBC-HS256, decrypted with key \"enc-1\""
        ),
        "{stdout}"
    );
    // It read exactly the Secret the policy names (the API server's audit log).
    let secret_reads: Vec<String> = cluster
        .audit()
        .iter()
        .filter(|e| e["objectRef"]["resource"] == "secrets" && e["user"]["username"] == "admin")
        .filter(|e| e["verb"] != "patch" && e["verb"] != "create")
        .map(|e| format!("{} {}", e["verb"], e["requestURI"]))
        .collect();
    assert_eq!(
        secret_reads,
        ["\"get\" \"/api/v1/namespaces/shop/secrets/token-keys\""],
        "{secret_reads:?}"
    );
    let missing = tokio::task::spawn_blocking(move || {
        explain(
            &["--policy", "shop/payments"],
            None,
            &[("KUBECONFIG", &kubeconfig)],
        )
    })
    .await
    .expect("join");
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(text(&missing).contains("JwtPolicy shop/payments not found"));
}

#[test]
fn explain_checks_a_certificate_bound_token_against_the_client_certificate() {
    use base64::Engine as _;
    let key = SigningKey::rsa("k1", "RS256", 2048).expect("key");
    let dir = tempfile::tempdir().expect("dir");
    let policy = inline_policy(dir.path(), &key);
    let certificate = |name: &str| {
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .expect("params")
            .self_signed(&rcgen::KeyPair::generate().expect("key"))
            .expect("certificate");
        (cert.pem(), cert.der().to_vec())
    };
    let (mine, der) = certificate("billing.example");
    let (other, _) = certificate("billing.example");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
    let thumbprint = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
    std::fs::write(dir.path().join("mine.pem"), &mine).expect("write");
    std::fs::write(dir.path().join("other.pem"), &other).expect("write");
    let token = key
        .mint(&claims(
            "https://idp.example.com/",
            json!({"cnf": {"x5t#S256": thumbprint}}),
        ))
        .expect("mint");
    let run = |cert: Option<&str>| {
        let path = cert.map(|c| dir.path().join(c).display().to_string());
        let mut args = vec!["--policy", &policy, "--token", &token];
        if let Some(path) = &path {
            args.extend(["--client-cert", path.as_str()]);
        }
        let out = explain(&args, None, &[]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(Some("mine.pem"));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("cnf.x5t#S256 matches the client certificate"),
        "{out}"
    );
    for (cert, reason) in [
        (Some("other.pem"), "certificate_binding_mismatch"),
        (None, "certificate_missing"),
    ] {
        let (code, out) = run(cert);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains(&format!("DENIED 401 {reason}:")), "{out}");
    }
    let missing = explain(
        &[
            "--policy",
            &policy,
            "--token",
            &token,
            "--client-cert",
            "/nonexistent.pem",
        ],
        None,
        &[],
    );
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
}
