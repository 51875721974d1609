//! What the benchmark sends: keys, tokens, policy files, an introspection endpoint, and the
//! prepared `CheckRequest`s with the decision each must get.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use prost::Message;
use serde_json::{Value, json};
use tollgate::client::{Probe, check_request};
use tollgate::local_issuer::{SigningKey, jwks, now_secs};

use crate::generator::{Expect, Prepared};

pub const ISSUER: &str = "https://idp.bench.example/";
pub const AUDIENCE: &str = "api://bench";
pub const HOST: &str = "api.bench.example";
pub const OPAQUE_HOST: &str = "opaque.bench.example";
/// Nested tokens: RS256 JWTs encrypted to tollgate's RSA-2048 key (RSA-OAEP-256 / A256GCM).
pub const JWE_HOST: &str = "jwe.bench.example";

/// Hosts of the many-policies scenario: `h0000.bench.example` …
pub fn many_host(i: usize) -> String {
    format!("h{i:04}.bench.example")
}

pub struct Keys {
    pub rs256: SigningKey,
    pub es256: SigningKey,
    pub eddsa: SigningKey,
    /// tollgate's decryption key (PKCS#8 PEM), and its public half for the issuer.
    pub jwe_private_pem: String,
    pub jwe_public: tollgate::jwe::EncryptionKey,
}

impl Keys {
    pub fn new() -> anyhow::Result<Keys> {
        use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
        let private =
            aws_lc_rs::rsa::PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(|e| anyhow::anyhow!("rsa: {e}"))?;
        let der: Pkcs8V1Der = private.as_der().map_err(|e| anyhow::anyhow!("der: {e}"))?;
        let jwe_private_pem = pem("PRIVATE KEY", der.as_ref());
        let mut jwe_public = tollgate::jwe::parse_keys(jwe_private_pem.as_bytes())?
            .first()
            .ok_or_else(|| anyhow::anyhow!("no key in the PEM"))?
            .public()?;
        jwe_public.kid = Some("bench-enc".into());
        Ok(Keys {
            rs256: SigningKey::rsa("rs", "RS256", 2048)?,
            es256: SigningKey::ec("es", "ES256")?,
            eddsa: SigningKey::ed25519("ed")?,
            jwe_private_pem,
            jwe_public,
        })
    }

    /// `token` encrypted to tollgate's key, as a nested JWT.
    pub fn encrypt(&self, token: &str) -> anyhow::Result<String> {
        Ok(tollgate::jwe::encrypt(
            token.as_bytes(),
            &self.jwe_public,
            tollgate::jwe::KeyManagement::RsaOaep256,
            tollgate::jwe::ContentEncryption::A256Gcm,
            Some("JWT"),
        )?)
    }

    pub fn jwks(&self) -> Value {
        jwks(&[&self.rs256, &self.es256, &self.eddsa])
    }
}

/// Claims like an IdP's access token (about 800 bytes as an RS256 JWT).
pub fn claims(n: u64) -> Value {
    let now = now_secs();
    json!({
        "iss": ISSUER, "sub": format!("user-{n:08}"), "aud": AUDIENCE,
        "iat": now, "nbf": now, "exp": now + 3600,
        "azp": "bench-client", "client_id": "bench-client",
        "scope": "orders.read orders.write profile email",
        "jti": format!("{n:016x}-5d1c-4b8e-9a7f-3c2e1b0a9d8c"),
        "email": format!("user-{n:08}@example.com"), "email_verified": true,
        "roles": ["user", "reader"], "tenant": "acme",
        "sid": "5d1c4b8e9a7f3c2e", "auth_time": now - 60, "acr": "1", "amr": ["pwd", "mfa"],
    })
}

fn policy(name: &str, host: &str, jwks: &Value, extra: Value) -> String {
    let mut spec = json!({
        "match": {"hosts": [host]},
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": jwks}],
        "requiredClaims": [{"name": "scope", "separator": " ", "values": ["orders.read"]}],
        // What a deployment whose Envoy reads no dynamic metadata sets: the answer carries the
        // headers only, and cache entries keep only what a hit reads.
        "forward": {"claimsToHeaders": [{"claim": "sub", "header": "x-user-id"},
                                        {"claim": "email", "header": "x-user-email"}],
                    "metadataClaims": []},
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "JwtPolicy",
        "metadata": {"name": name, "namespace": "bench"}, "spec": spec})
    .to_string()
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// The policy of [`JWE_HOST`]: the main policy's checks, and tollgate's decryption key.
pub fn write_jwe_policy(dir: &Path, keys: &Keys) -> anyhow::Result<()> {
    let key = dir.join("jwe-key.pem");
    std::fs::write(&key, &keys.jwe_private_pem)?;
    let decryption = json!({"decryption": {"keys": [
        {"file": key.display().to_string(), "kid": "bench-enc"}]}});
    std::fs::write(
        dir.join("jwe.yaml"),
        policy("jwe", JWE_HOST, &keys.jwks(), decryption),
    )?;
    Ok(())
}

/// Writes the policies: the main host, the opaque-token host (introspection at `introspect`),
/// and `many` more, one host each. `audience_suffix` changes every many-host policy (a rebuild).
pub fn write_policies(
    dir: &Path,
    jwks: &Value,
    introspect: SocketAddr,
    many: usize,
    extra_audience: Option<&str>,
) -> anyhow::Result<()> {
    write_files(&render_policies(
        dir,
        jwks,
        introspect,
        many,
        extra_audience,
    )?)
}

/// The files [`write_policies`] writes, rendered: the rebuild run renders them before its
/// measured window, so that window sees only the writes, as from a process elsewhere.
pub fn render_policies(
    dir: &Path,
    jwks: &Value,
    introspect: SocketAddr,
    many: usize,
    extra_audience: Option<&str>,
) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let mut files = vec![
        (dir.join("client-secret"), "bench-secret".to_string()),
        (dir.join("main.yaml"), policy("main", HOST, jwks, json!({}))),
    ];
    let introspection = json!({"introspection": {
        "endpoint": format!("http://{introspect}/introspect"), "clientId": "bench",
        "clientSecretRef": {"file": dir.join("client-secret").display().to_string()},
        "allowInsecureHttp": true, "cache": {"defaultTtl": "1h", "maxEntries": 10000}}});
    files.push((
        dir.join("opaque.yaml"),
        policy("opaque", OPAQUE_HOST, jwks, introspection),
    ));
    for i in 0..many {
        let mut doc: Value =
            serde_json::from_str(&policy(&format!("p{i:04}"), &many_host(i), jwks, json!({})))?;
        if let Some(extra) = extra_audience {
            doc["spec"]["issuers"][0]["audiences"] = json!([AUDIENCE, extra]);
        }
        files.push((dir.join(format!("p{i:04}.yaml")), doc.to_string()));
    }
    Ok(files)
}

/// Writes rendered files.
pub fn write_files(files: &[(PathBuf, String)]) -> anyhow::Result<()> {
    for (path, text) in files {
        std::fs::write(path, text)?;
    }
    Ok(())
}

/// An introspection endpoint that says every token is active, with the bench's claims.
pub async fn introspection_server() -> anyhow::Result<SocketAddr> {
    let app = Router::new().route(
        "/introspect",
        post(|| async {
            let mut answer = claims(0);
            answer["active"] = json!(true);
            axum::Json(answer)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

/// The headers a browser-facing request carries through Envoy, besides the token.
fn realistic_headers(n: u64) -> Vec<(String, String)> {
    [
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36".to_string()),
        ("accept", "application/json, text/plain, */*".into()),
        ("accept-encoding", "gzip, deflate, br".into()),
        ("accept-language", "en-US,en;q=0.9".into()),
        ("x-request-id", format!("{n:08x}-0f3c-4e2a-9b1d-7c6e5a4b3c2d")),
        ("x-forwarded-for", "203.0.113.7".into()),
        ("x-forwarded-proto", "https".into()),
        ("x-envoy-expected-rq-timeout-ms", "15000".into()),
        ("traceparent", format!("00-{n:032x}-{n:016x}-01")),
        ("cookie", "theme=dark; lang=en".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A prepared `Check` for `host` with `token`.
pub fn check(host: &str, path: &str, token: Option<&str>, n: u64, expect: Expect) -> Prepared {
    let request = check_request(&Probe {
        host: host.into(),
        path: path.into(),
        method: "GET".into(),
        token: token.map(str::to_owned),
        headers: realistic_headers(n),
        policy: None,
    });
    Prepared {
        body: Bytes::from(request.encode_to_vec()),
        authority: host.into(),
        path: path.into(),
        token: token.map(str::to_owned),
        expect,
    }
}

pub const UNAUTHENTICATED: Expect = Expect::Deny {
    grpc: 16,
    http: 401,
};

/// `token` with its signature's last bytes changed (same header, so the same key is tried).
pub fn bad_signature(token: &str) -> String {
    let (signed, signature) = token.rsplit_once('.').unwrap_or((token, ""));
    let mut bytes: Vec<u8> = signature.bytes().collect();
    let n = bytes.len();
    for b in bytes.iter_mut().skip(n.saturating_sub(8)) {
        *b = if *b == b'A' { b'B' } else { b'A' };
    }
    format!("{signed}.{}", String::from_utf8_lossy(&bytes))
}

/// Distinct tokens signed by `key`.
pub fn mint_many(key: &SigningKey, count: usize, offset: u64) -> anyhow::Result<Vec<String>> {
    (0..count as u64)
        .map(|n| Ok(key.mint(&claims(offset + n))?))
        .collect()
}

/// Average size of the encoded requests, in bytes.
pub fn average_size(requests: &[Prepared]) -> usize {
    requests.iter().map(|r| r.body.len()).sum::<usize>() / requests.len().max(1)
}

/// Opaque tokens, as an IdP issues them (43 characters).
pub fn opaque_token(n: u64) -> String {
    format!("op{n:041x}")
}
