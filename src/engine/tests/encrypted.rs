//! Encrypted (nested) tokens through the whole engine: each algorithm family, the opt-in
//! RSA1_5, and every failure with its reason.

use std::io::Write as _;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{KeySize, PrivateDecryptingKey};
use serde_json::json;

use super::*;
use crate::jwe::{self, ContentEncryption, EncryptionKey, KeyManagement};

/// A private key written to a temporary file, and its public half.
struct KeyFile {
    file: tempfile::NamedTempFile,
    public: EncryptionKey,
}

fn key_file(text: &str, kid: Option<&str>) -> KeyFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write");
    let key = jwe::parse_keys(text.as_bytes()).expect("key parses")[0].clone();
    let key = match kid {
        Some(kid) => key.with_kid(kid),
        None => key,
    };
    KeyFile {
        file,
        public: key.public().expect("public half"),
    }
}

fn rsa_key(kid: &str) -> KeyFile {
    let key = PrivateDecryptingKey::generate(KeySize::Rsa2048).expect("rsa");
    let der: Pkcs8V1Der = key.as_der().expect("der");
    let body = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    key_file(
        &format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n"),
        Some(kid),
    )
}

fn policy_with(keys: &[(&KeyFile, Option<&str>)], extra: &str) -> Arc<Policy> {
    let entries: Vec<String> = keys
        .iter()
        .map(|(k, kid)| match kid {
            Some(kid) => format!("{{file: {:?}, kid: {kid}}}", k.file.path()),
            None => format!("{{file: {:?}}}", k.file.path()),
        })
        .collect();
    mk_policy(
        "encrypted",
        &format!("{{decryption: {{keys: [{}]{extra}}}}}", entries.join(", ")),
    )
}

fn nested(to: &EncryptionKey, alg: KeyManagement, enc: ContentEncryption) -> String {
    jwe::encrypt(good().as_bytes(), to, alg, enc, Some("JWT")).expect("encrypts")
}

async fn judge_token(policy: &Arc<Policy>, token: &str) -> Decision {
    let s = snapshot(std::slice::from_ref(policy), DefaultAction::Deny);
    decide(&s, &req("/orders").bearer(token)).await
}

fn ec_key(kid: &str, alg: &'static aws_lc_rs::agreement::Algorithm) -> KeyFile {
    use aws_lc_rs::agreement::PrivateKey;
    let der: Pkcs8V1Der = PrivateKey::generate(alg)
        .expect("ec")
        .as_der()
        .expect("der");
    let body = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    key_file(
        &format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n"),
        Some(kid),
    )
}

fn aes_key(kid: &str, len: usize) -> KeyFile {
    let mut k = vec![0u8; len];
    aws_lc_rs::rand::fill(&mut k).expect("rng");
    key_file(
        &json!({"kty": "oct", "kid": kid, "k": B64.encode(&k)}).to_string(),
        None,
    )
}

#[tokio::test]
async fn a_nested_token_of_every_algorithm_pair_is_validated_like_any_other() {
    let rsa = rsa_key("rsa");
    let p256 = ec_key("p256", &aws_lc_rs::agreement::ECDH_P256);
    let x25519 = {
        use aws_lc_rs::agreement::{PrivateKey, X25519};
        use aws_lc_rs::encoding::{AsBigEndian, Curve25519SeedBin};
        let seed: Curve25519SeedBin = PrivateKey::generate(&X25519)
            .expect("x25519")
            .as_be_bytes()
            .expect("seed");
        // RFC 8410 PKCS#8 of an X25519 key.
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(seed.as_ref());
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        key_file(
            &format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n"),
            Some("x25519"),
        )
    };
    let aes = [
        aes_key("a128", 16),
        aes_key("a256", 32),
        aes_key("a384", 48),
        aes_key("a512", 64),
    ];
    let mut keys: Vec<(&KeyFile, Option<&str>)> = vec![
        (&rsa, Some("rsa")),
        (&p256, Some("p256")),
        (&x25519, Some("x25519")),
    ];
    keys.extend(aes.iter().map(|k| (k, None)));
    let policy = policy_with(&keys, ", allowRsa1_5: true");
    let mut pairs = 0;
    for (to, algs) in [
        (
            &rsa.public,
            vec![
                KeyManagement::RsaOaep,
                KeyManagement::RsaOaep256,
                KeyManagement::Rsa1_5,
            ],
        ),
        (
            &p256.public,
            vec![
                KeyManagement::EcdhEs,
                KeyManagement::EcdhEsA128Kw,
                KeyManagement::EcdhEsA256Kw,
            ],
        ),
        (
            &x25519.public,
            vec![
                KeyManagement::EcdhEs,
                KeyManagement::EcdhEsA128Kw,
                KeyManagement::EcdhEsA256Kw,
            ],
        ),
        (
            &aes[0].public,
            vec![KeyManagement::A128Kw, KeyManagement::Dir],
        ),
        (
            &aes[1].public,
            vec![KeyManagement::A256Kw, KeyManagement::Dir],
        ),
        (&aes[2].public, vec![KeyManagement::Dir]),
        (&aes[3].public, vec![KeyManagement::Dir]),
    ] {
        for alg in algs {
            for enc in ContentEncryption::ALL {
                let Ok(token) = jwe::encrypt(good().as_bytes(), to, alg, enc, Some("JWT")) else {
                    // dir needs a key of the content encryption's size.
                    assert_eq!(alg, KeyManagement::Dir, "{alg} {enc}");
                    continue;
                };
                let decision = judge_token(&policy, &token).await;
                let allow = allowed(&decision);
                assert_eq!(
                    allow.claims.as_ref().expect("claims").map()["sub"],
                    "user-1",
                    "{alg} {enc}"
                );
                pairs += 1;
            }
        }
    }
    // 3 RSA x 5 + 2 curves x 3 x 5 + 2 AES key wraps x 5 + 5 dir sizes.
    assert_eq!(pairs, 15 + 30 + 10 + 5);
}

#[tokio::test]
async fn rsa1_5_is_accepted_only_when_allowed() {
    // The shape NetIQ Access Manager issues by default.
    let rsa = rsa_key("nam");
    let token = nested(
        &rsa.public,
        KeyManagement::Rsa1_5,
        ContentEncryption::A128CbcHs256,
    );
    let refused = judge_token(&policy_with(&[(&rsa, Some("nam"))], ""), &token).await;
    let deny = denied(&refused);
    assert_eq!(deny.reason, Reason::AlgorithmNotAllowed);
    assert!(
        deny.description.contains("padding-oracle"),
        "{}",
        deny.description
    );
    assert!(
        deny.hint
            .as_deref()
            .unwrap_or_default()
            .contains("allowRsa1_5")
    );
    let allowed_policy = policy_with(&[(&rsa, Some("nam"))], ", allowRsa1_5: true");
    allowed(&judge_token(&allowed_policy, &token).await);
}

#[tokio::test]
async fn each_decryption_failure_has_its_reason() {
    let rsa = rsa_key("enc-1");
    let other = rsa_key("enc-2");
    let policy = policy_with(&[(&rsa, Some("enc-1"))], "");
    let token = nested(
        &rsa.public,
        KeyManagement::RsaOaep256,
        ContentEncryption::A256Gcm,
    );

    // A tampered tag.
    let (head, tag) = token.rsplit_once('.').expect("tag");
    let mut bytes = B64.decode(tag).expect("b64");
    bytes[0] ^= 1;
    let tampered = format!("{head}.{}", B64.encode(bytes));
    let deny = judge_token(&policy, &tampered).await;
    assert_eq!(denied(&deny).reason, Reason::DecryptionFailed);
    assert_eq!(denied(&deny).status, 401);

    // Encrypted to a key the policy does not hold.
    let foreign = nested(
        &other.public,
        KeyManagement::RsaOaep256,
        ContentEncryption::A256Gcm,
    );
    let deny = judge_token(&policy, &foreign).await;
    assert_eq!(denied(&deny).reason, Reason::DecryptionKeyNotFound);
    assert!(denied(&deny).description.contains("\"enc-2\""));
    assert!(
        denied(&deny)
            .hint
            .as_deref()
            .unwrap_or_default()
            .contains("enc-1")
    );

    // The right kid, the wrong key.
    let impostor = policy_with(&[(&other, Some("enc-1"))], "");
    let deny = judge_token(&impostor, &token).await;
    assert_eq!(denied(&deny).reason, Reason::DecryptionFailed);

    // Claims encrypted without a signature.
    let unsigned = jwe::encrypt(
        good_claims().to_string().as_bytes(),
        &rsa.public,
        KeyManagement::RsaOaep256,
        ContentEncryption::A256Gcm,
        None,
    )
    .expect("encrypts");
    let deny = judge_token(&policy, &unsigned).await;
    assert_eq!(denied(&deny).reason, Reason::TokenNotSigned);

    // A signed token whose signature is wrong inside a good envelope.
    let forged = jwe::encrypt(
        ROGUE.mint(&good_claims()).expect("mint").as_bytes(),
        &rsa.public,
        KeyManagement::RsaOaep256,
        ContentEncryption::A256Gcm,
        Some("JWT"),
    )
    .expect("encrypts");
    let deny = judge_token(&policy, &forged).await;
    assert_eq!(denied(&deny).reason, Reason::SignatureInvalid);

    // An encrypted token inside an encrypted token.
    let double = jwe::encrypt(
        token.as_bytes(),
        &rsa.public,
        KeyManagement::RsaOaep256,
        ContentEncryption::A256Gcm,
        Some("JWT"),
    )
    .expect("encrypts");
    let deny = judge_token(&policy, &double).await;
    assert_eq!(denied(&deny).reason, Reason::TokenMalformed);

    // Without decryption keys an encrypted token is only recognized.
    let plain = mk_policy("plain", "");
    let deny = judge_token(&plain, &token).await;
    assert_eq!(denied(&deny).reason, Reason::TokenEncrypted);
    assert!(
        denied(&deny)
            .hint
            .as_deref()
            .unwrap_or_default()
            .contains("spec.decryption")
    );
}

#[tokio::test]
async fn compressed_payloads_are_refused() {
    // RFC 7520 §5.9: A128KW + A128GCM with zip: DEF, and its key.
    let vectors: serde_json::Value =
        serde_json::from_str(include_str!("../../../tests/data/rfc7520-jwe.json")).expect("json");
    let example = vectors["examples"]
        .as_array()
        .and_then(|all| all.iter().find(|e| e["section"] == "5.9"))
        .expect("5.9");
    let key = key_file(&example["key"].to_string(), None);
    let policy = policy_with(&[(&key, None)], "");
    let deny = judge_token(&policy, example["compact"].as_str().expect("compact")).await;
    assert_eq!(denied(&deny).reason, Reason::AlgorithmNotAllowed);
    assert!(denied(&deny).description.contains("zip"));
}

#[tokio::test]
async fn unsigned_encrypted_claims_pass_only_when_the_policy_says_so() {
    let aes = key_file(
        &json!({"kty": "oct", "kid": "shared", "k": B64.encode([9u8; 16])}).to_string(),
        None,
    );
    let policy = mk_policy(
        "unsigned",
        &format!(
            "{{decryption: {{keys: [{{file: {:?}, algorithms: [A128KW, dir]}}]}}, requireSignedTokens: false}}",
            aes.file.path()
        ),
    );
    let token = jwe::encrypt(
        good_claims().to_string().as_bytes(),
        &aes.public,
        KeyManagement::A128Kw,
        ContentEncryption::A128Gcm,
        None,
    )
    .expect("encrypts");
    let decision = judge_token(&policy, &token).await;
    assert_eq!(
        allowed(&decision).claims.as_ref().expect("claims").map()["sub"],
        "user-1"
    );

    // The claims still meet every check: an expired one is refused.
    let expired = jwe::encrypt(
        claims_with(json!({"exp": now_secs() - 3600}))
            .to_string()
            .as_bytes(),
        &aes.public,
        KeyManagement::A128Kw,
        ContentEncryption::A128Gcm,
        None,
    )
    .expect("encrypts");
    assert_eq!(
        denied(&judge_token(&policy, &expired).await).reason,
        Reason::TokenExpired
    );
}

#[tokio::test]
async fn claims_anyone_could_encrypt_never_pass_unsigned() {
    // An RSA or EC public key lets anyone encrypt admin claims: refused when compiling.
    let rsa = rsa_key("rsa-enc");
    for extra in [
        format!(
            "{{decryption: {{keys: [{{file: {:?}}}]}}, requireSignedTokens: false}}",
            rsa.file.path()
        ),
        format!(
            "{{decryption: {{keys: [{{file: {:?}, algorithms: [RSA-OAEP-256]}}]}}, requireSignedTokens: false}}",
            rsa.file.path()
        ),
    ] {
        let err = try_compile("open", &spec_with(&extra)).expect_err(&extra);
        assert!(
            err.problems
                .iter()
                .any(|p| p.field.starts_with("spec.") && p.message.contains("shared")),
            "{extra}: {err}"
        );
    }
    // One shared key speaks for one issuer only.
    let aes = key_file(
        &json!({"kty": "oct", "kid": "shared", "k": B64.encode([9u8; 16])}).to_string(),
        None,
    );
    let two_issuers = format!(
        r#"{{issuers: [{{issuer: "https://a.example.com/", audiences: [a], jwksUri: "https://a.example.com/keys"}}, {{issuer: "https://b.example.com/", audiences: [a], jwksUri: "https://b.example.com/keys"}}], decryption: {{keys: [{{file: {:?}, algorithms: [dir, A128KW]}}]}}, requireSignedTokens: false}}"#,
        aes.file.path()
    );
    let err = try_compile("two", &spec(&two_issuers)).expect_err("two issuers");
    assert!(err.to_string().contains("exactly one issuer"), "{err}");
    // And at runtime, should such a policy exist anyway: the forged claims are refused.
    let mut policy = (*mk_policy(
        "open",
        &format!(
            "{{decryption: {{keys: [{{file: {:?}}}]}}}}",
            rsa.file.path()
        ),
    ))
    .clone();
    policy.require_signed = false;
    let forged = jwe::encrypt(
        claims_with(json!({"roles": ["admin"]}))
            .to_string()
            .as_bytes(),
        &rsa.public,
        KeyManagement::RsaOaep256,
        ContentEncryption::A256Gcm,
        None,
    )
    .expect("anyone can encrypt to a public key");
    let decision = judge_token(&Arc::new(policy), &forged).await;
    assert_eq!(denied(&decision).reason, Reason::TokenNotSigned);
}

#[test]
fn decryption_settings_are_checked_when_compiling() {
    let rsa = rsa_key("k");
    let path = format!("{:?}", rsa.file.path());
    let cases = [
        (
            format!("{{decryption: {{keys: [{{file: {path}, algorithms: [RSA1_5]}}]}}}}"),
            "spec.decryption.keys[0].algorithms[0]",
        ),
        (
            format!("{{decryption: {{keys: [{{file: {path}, algorithms: [A128KW]}}]}}}}"),
            "spec.decryption.keys[0]",
        ),
        (
            format!(
                "{{decryption: {{keys: [{{file: {path}, kid: a}}, {{file: {path}, kid: a}}]}}}}"
            ),
            "spec.decryption.keys",
        ),
        (
            "{decryption: {keys: [{file: /nonexistent/key.pem}]}}".to_string(),
            "spec.decryption.keys[0]",
        ),
        (
            "{requireSignedTokens: false}".to_string(),
            "spec.requireSignedTokens",
        ),
    ];
    for (extra, field) in cases {
        let err = try_compile("bad", &spec_with(&extra)).expect_err(&extra);
        assert!(
            err.problems.iter().any(|p| p.field == field),
            "{extra}: {err}"
        );
    }
    let missing = try_compile(
        "bad",
        &spec_with("{decryption: {keys: [{file: /nonexistent/key.pem}]}}"),
    )
    .expect_err("missing file");
    assert_eq!(missing.reason(), "SecretNotFound");
}
