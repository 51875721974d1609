//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the fuzz targets'
//! bodies (`fuzz/harness.rs`), so every `cargo test` re-checks each seed and each finding that
//! became a regression input. `cargo fuzz run <target>` explores further (see `fuzz/README.md`).
//!
//! The seeds are written by `cargo test --test fuzz_corpus -- --ignored write_seeds`.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};

use serde_json::json;
use tollgate::decision::{Decision, Reason};

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.is_file())
        .map(|path| {
            let bytes = std::fs::read(&path).expect("read");
            (path, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no seeds", dir.display());
    files
}

fn reasons(decisions: &[Option<Decision>]) -> Vec<Reason> {
    decisions
        .iter()
        .flatten()
        .map(|d| match d {
            Decision::Allow(a) => a.reason,
            Decision::Deny(d) => d.reason,
        })
        .collect()
}

#[test]
fn token_corpus() {
    let decisions: Vec<Option<Decision>> = corpus("token")
        .iter()
        .map(|(_, bytes)| harness::token(bytes))
        .collect();
    // The corpus reaches both sides of the oracle: valid tokens, and many reasons to deny.
    let reasons = reasons(&decisions);
    assert!(reasons.contains(&Reason::Valid), "{reasons:?}");
    for expected in [
        Reason::SignatureInvalid,
        Reason::TokenExpired,
        Reason::AudienceMismatch,
        Reason::AlgorithmNotAllowed,
        Reason::TokenMalformed,
        Reason::TokenEncrypted,
    ] {
        assert!(reasons.contains(&expected), "{expected:?} in {reasons:?}");
    }
}

#[test]
fn check_corpus() {
    let decisions: Vec<Option<Decision>> = corpus("check")
        .iter()
        .map(|(_, bytes)| harness::check(bytes))
        .collect();
    let reasons = reasons(&decisions);
    for expected in [
        Reason::Valid,
        Reason::InsufficientScope,
        Reason::TokenMissing,
        Reason::NoPolicy,
        Reason::RequestMalformed,
    ] {
        assert!(reasons.contains(&expected), "{expected:?} in {reasons:?}");
    }
}

#[test]
fn jwe_corpus() {
    for (_, bytes) in corpus("jwe") {
        harness::jwe(&bytes);
    }
}

#[test]
fn jwks_corpus() {
    for (_, bytes) in corpus("jwks") {
        harness::jwks(&bytes);
    }
}

#[test]
fn policy_corpus() {
    for (_, bytes) in corpus("policy") {
        harness::policy(&bytes);
    }
}

/// Writes the seed corpora. Run once after changing the harness, and commit the files.
#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn write_seeds() {
    use base64::Engine as _;
    use prost::Message as _;
    use tollgate::jwe::{ContentEncryption, EncryptionKey, KeyManagement};

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join(name), bytes).expect("write");
    };
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let key = jsonwebtoken::EncodingKey::from_ec_pem(harness::PRIVATE_PEM.as_bytes()).expect("key");
    let mint = |header: serde_json::Value, claims: serde_json::Value| {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature =
            jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::ES256)
                .expect("sign");
        format!("{input}.{signature}")
    };
    // Far in the future, so the seeds stay valid.
    let exp = 4_102_444_800_i64; // 2100-01-01
    let claims = |extra: serde_json::Value| {
        let mut c = json!({"iss": harness::ISSUER, "aud": harness::AUDIENCE, "sub": "user-1",
            "scp": "fuzz.read", "iat": 1_700_000_000, "exp": exp});
        for (k, v) in extra.as_object().expect("object") {
            c[k] = v.clone();
        }
        c
    };
    let es256 = json!({"alg": "ES256", "kid": "k1", "typ": "JWT"});
    let valid = mint(es256.clone(), claims(json!({})));
    let admin = mint(es256.clone(), claims(json!({"roles": ["admin"]})));
    // A valid signature, over another message.
    let (signed_input, _) = valid.rsplit_once('.').expect("jws");
    let (_, admin_signature) = admin.rsplit_once('.').expect("jws");
    let tampered = format!("{signed_input}.{admin_signature}");
    let jwe_key = EncryptionKey::from_jwk(&serde_json::from_str(harness::JWE_KEY).expect("jwk"))
        .expect("jwe key");
    let encrypted = tollgate::jwe::encrypt(
        valid.as_bytes(),
        &jwe_key,
        KeyManagement::A256Kw,
        ContentEncryption::A256Gcm,
        Some("JWT"),
    )
    .expect("encrypt");
    let dir_encrypted = tollgate::jwe::encrypt(
        b"{\"sub\":\"user-1\"}",
        &jwe_key,
        KeyManagement::Dir,
        ContentEncryption::A128CbcHs256,
        None,
    );
    let tokens: Vec<(&str, String)> = vec![
        ("valid", valid.clone()),
        ("admin", admin.clone()),
        ("tampered", tampered),
        (
            "expired",
            mint(es256.clone(), claims(json!({"exp": 1_700_000_100}))),
        ),
        (
            "not-yet",
            mint(es256.clone(), claims(json!({"nbf": exp - 10}))),
        ),
        (
            "other-aud",
            mint(es256.clone(), claims(json!({"aud": ["api://other"]}))),
        ),
        (
            "aud-number",
            mint(es256.clone(), claims(json!({"aud": ["api://other", 7]}))),
        ),
        (
            "other-iss",
            mint(es256.clone(), claims(json!({"iss": "https://evil.test/"}))),
        ),
        (
            "no-scope",
            mint(es256.clone(), claims(json!({"scp": "other"}))),
        ),
        (
            "alg-none",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none"}"#),
                b64(claims(json!({})).to_string().as_bytes())
            ),
        ),
        (
            "hs256",
            mint(json!({"alg": "HS256", "kid": "k1"}), claims(json!({}))),
        ),
        (
            "crit",
            mint(
                json!({"alg": "ES256", "kid": "k1", "crit": ["exp"], "exp": 1}),
                claims(json!({})),
            ),
        ),
        (
            "unknown-kid",
            mint(
                json!({"alg": "ES256", "kid": "../../etc/passwd"}),
                claims(json!({})),
            ),
        ),
        (
            "jwk-header",
            mint(
                json!({"alg": "ES256", "jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}}),
                claims(json!({})),
            ),
        ),
        (
            "float-exp",
            mint(
                es256.clone(),
                claims(json!({"exp": 4.1e9, "nbf": -1, "iat": "yesterday"})),
            ),
        ),
        (
            "nested-claims",
            mint(
                es256.clone(),
                claims(json!({"a": [[[[[[{"b": [1, 2.5, null, true]}]]]]]]})),
            ),
        ),
        ("encrypted", encrypted.clone()),
        ("malformed", "e30.e30.e30.e30".to_string()),
        ("padding", format!("{valid}==")),
    ];
    for (name, token) in &tokens {
        write("token", name, token.as_bytes());
    }

    let checks = [
        (
            "valid",
            harness::request("/orders", &[("authorization", &format!("Bearer {valid}"))]),
        ),
        (
            "admin-path-user",
            harness::request("/admin", &[("authorization", &format!("Bearer {valid}"))]),
        ),
        (
            "admin-path-admin",
            harness::request("/admin", &[("authorization", &format!("bearer {admin}"))]),
        ),
        ("no-token", harness::request("/orders", &[])),
        (
            "two-tokens",
            harness::request(
                "/orders",
                &[("authorization", &format!("Bearer {valid}, Bearer {admin}"))],
            ),
        ),
        (
            "dot-segments",
            harness::request(
                "/orders/../admin/%2e%2e/x?y=1#z",
                &[("authorization", &format!("Bearer {valid}"))],
            ),
        ),
    ];
    for (name, request) in checks {
        write("check", name, &request.encode_to_vec());
    }
    let mut other_host = harness::request("/orders", &[]);
    if let Some(http) = other_host
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        http.host = "elsewhere.test".into();
    }
    write("check", "other-host", &other_host.encode_to_vec());
    write(
        "check",
        "no-attributes",
        &tollgate::proto::auth::CheckRequest::default().encode_to_vec(),
    );

    write("jwe", "a256kw-a256gcm", encrypted.as_bytes());
    if let Ok(token) = dir_encrypted {
        write("jwe", "dir-a128cbc", token.as_bytes());
    }
    let zip = format!(
        "{}.{}",
        b64(br#"{"alg":"A256KW","enc":"A256GCM","kid":"enc1","zip":"DEF"}"#),
        encrypted.split_once('.').expect("jwe").1
    );
    write("jwe", "zip", zip.as_bytes());
    write("jwe", "five-empty", b"....");

    let point = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    let jwks_seeds = [
        (
            "ec",
            json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "a", "x": point, "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}),
        ),
        (
            "ec-off-curve",
            json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "a", "x": point, "y": point}]}),
        ),
        (
            "rsa-small",
            json!({"keys": [{"kty": "RSA", "kid": "r", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"}]}),
        ),
        (
            "rsa-e3",
            json!({"keys": [{"kty": "RSA", "kid": "r", "n": "AQAB", "e": "Aw"}]}),
        ),
        (
            "oct",
            json!({"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}),
        ),
        (
            "okp",
            json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "e", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}),
        ),
        (
            "mixed",
            json!({"keys": [{"kty": "EC"}, {"kty": "RSA", "use": "enc"}, {"kid": 7}, null, "x"]}),
        ),
    ];
    for (name, doc) in jwks_seeds {
        write("jwks", name, doc.to_string().as_bytes());
    }

    write("policy", "fuzz", harness::policy_yaml().as_bytes());
    let policies = [
        (
            "discovery",
            "apiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nmetadata: {name: d, namespace: x}\nspec:\n  match: {hosts: ['*.example.com'], paths: [/a, /b/]}\n  issuers:\n  - {issuer: 'https://login.example.com/t/v2.0', audiences: [x], discovery: 'https://login.example.com/t/v2.0/.well-known/openid-configuration'}\n  rules:\n  - {paths: [/a/admin], methods: [POST], requiredClaims: [{name: roles, values: [a, b], match: all}]}\n  - {paths: [/health], allowAnonymous: true}\n",
        ),
        (
            "introspection",
            "apiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nmetadata: {name: i, namespace: x}\nspec:\n  issuers: [{issuer: 'https://idp.example.com/', audiences: [x], jwksUri: 'https://idp.example.com/jwks'}]\n  introspection: {endpoint: 'https://idp.example.com/introspect', clientId: c, clientSecretRef: {file: s.txt}, timeout: 2s}\n",
        ),
        (
            "decryption",
            "apiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nmetadata: {name: e, namespace: x}\nspec:\n  issuers: [{issuer: 'https://idp.example.com/', audiences: [x], jwksUri: 'https://idp.example.com/jwks'}]\n  decryption: {keys: [{file: k.jwk}]}\n",
        ),
        (
            "insecure",
            "apiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nmetadata: {name: h, namespace: x}\nspec:\n  issuers: [{issuer: 'http://169.254.169.254/', audiences: [x], jwksUri: 'http://169.254.169.254/latest/meta-data'}]\n",
        ),
        (
            "two-docs",
            "---\napiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nmetadata: {name: a, namespace: x}\nspec: {issuers: []}\n---\n{\"apiVersion\": \"tollgate.dev/v1alpha1\"}\n",
        ),
    ];
    for (name, text) in policies {
        write("policy", name, text.as_bytes());
    }
}
