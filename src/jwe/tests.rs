use std::sync::LazyLock;

use aws_lc_rs::agreement;
use aws_lc_rs::encoding::{
    AsBigEndian, AsDer, Curve25519SeedBin, EcPrivateKeyRfc5915Der, Pkcs8V1Der,
};
use aws_lc_rs::rsa::{KeySize, PrivateDecryptingKey};
use base64::Engine as _;
use serde_json::{Value, json};

use super::*;

static VECTORS: LazyLock<Value> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../../tests/data/rfc7520-jwe.json")).expect("vectors")
});

fn example(section: &str) -> &'static Value {
    VECTORS["examples"]
        .as_array()
        .and_then(|all| all.iter().find(|e| e["section"] == section))
        .expect("example exists")
}

fn decryptor(key: &Value, allow_rsa1_5: bool) -> Decryptor {
    Decryptor::new(
        vec![DecryptionKey::from_jwk(key).expect("key parses")],
        allow_rsa1_5,
    )
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

#[test]
fn rfc7520_examples_decrypt_to_the_published_plaintext() {
    let plaintext = VECTORS["plaintext"].as_str().expect("plaintext");
    let mut checked = Vec::new();
    for example in VECTORS["examples"].as_array().expect("examples") {
        if example.get("unsupported").is_some() || example.get("compressed").is_some() {
            continue;
        }
        let section = example["section"].as_str().expect("section");
        let compact = example["compact"].as_str().expect("compact");
        let out = decryptor(&example["key"], true)
            .decrypt(compact)
            .unwrap_or_else(|e| panic!("RFC 7520 {section}: {e}"));
        assert_eq!(
            String::from_utf8(out.plaintext).expect("utf-8"),
            plaintext,
            "RFC 7520 {section}"
        );
        assert_eq!(out.header.kid.as_deref(), example["key"]["kid"].as_str());
        checked.push(section.to_string());
    }
    assert_eq!(checked, ["5.1", "5.2", "5.4", "5.5", "5.6", "5.8"]);
}

#[test]
fn rfc7520_refusals_name_their_reason() {
    // 5.1 is RSA1_5: refused unless allowed.
    let rsa1_5 = example("5.1");
    let err = decryptor(&rsa1_5["key"], false)
        .decrypt(rsa1_5["compact"].as_str().expect("compact"))
        .expect_err("RSA1_5 refused by default");
    assert_eq!(err, JweError::Rsa1_5NotAllowed);
    assert_eq!(err.reason(), Reason::AlgorithmNotAllowed);

    // 5.9 compresses the payload: refused before any decryption.
    let zip = example("5.9");
    let err = decryptor(&zip["key"], false)
        .decrypt(zip["compact"].as_str().expect("compact"))
        .expect_err("zip refused");
    assert_eq!(err, JweError::Compressed("DEF".into()));

    // 5.3 (PBES2) and 5.7 (A256GCMKW) use algorithms tollgate does not implement.
    let key = &example("5.8")["key"];
    for section in ["5.3", "5.7"] {
        let err = decryptor(key, false)
            .decrypt(example(section)["compact"].as_str().expect("compact"))
            .expect_err("unsupported");
        assert!(
            matches!(&err, JweError::Unsupported { member: "alg", .. }),
            "{section}: {err:?}"
        );
    }
}

#[test]
fn a_tampered_rfc7520_token_fails_the_same_way_everywhere() {
    for section in ["5.1", "5.2", "5.4", "5.5", "5.6", "5.8"] {
        let example = example(section);
        let compact = example["compact"].as_str().expect("compact");
        let d = decryptor(&example["key"], true);
        let parts: Vec<&str> = compact.split('.').collect();
        for part in 1..5 {
            if parts[part].is_empty() {
                continue;
            }
            let mut bytes = B64.decode(parts[part]).expect("b64");
            let last = bytes.len() - 1;
            bytes[last] ^= 0x01;
            let mut changed = parts.clone();
            let encoded = B64.encode(&bytes);
            changed[part] = &encoded;
            let err = d.decrypt(&changed.join(".")).expect_err("tampered");
            assert_eq!(err, JweError::Failed, "{section} segment {part}");
            assert_eq!(err.reason(), Reason::DecryptionFailed);
        }
    }
}

/// A generated key of every kind, as PEM or JWK text, with the algorithms to try it with.
fn generated_keys() -> Vec<(&'static str, String, Vec<KeyManagement>)> {
    let rsa = PrivateDecryptingKey::generate(KeySize::Rsa2048).expect("rsa");
    let rsa_der: Pkcs8V1Der = rsa.as_der().expect("der");
    let mut out = vec![(
        "RSA-2048 PKCS#8",
        pem("PRIVATE KEY", rsa_der.as_ref()),
        vec![
            KeyManagement::RsaOaep,
            KeyManagement::RsaOaep256,
            KeyManagement::Rsa1_5,
        ],
    )];
    let ecdh = vec![
        KeyManagement::EcdhEs,
        KeyManagement::EcdhEsA128Kw,
        KeyManagement::EcdhEsA256Kw,
    ];
    let p256 = agreement::PrivateKey::generate(&agreement::ECDH_P256).expect("p256");
    let sec1: EcPrivateKeyRfc5915Der = p256.as_der().expect("der");
    out.push((
        "EC P-256 SEC1",
        pem("EC PRIVATE KEY", sec1.as_ref()),
        ecdh.clone(),
    ));
    for (name, alg) in [
        ("EC P-384 PKCS#8", &agreement::ECDH_P384),
        ("EC P-521 PKCS#8", &agreement::ECDH_P521),
    ] {
        let key = agreement::PrivateKey::generate(alg).expect("ec");
        let der: Pkcs8V1Der = key.as_der().expect("der");
        out.push((name, pem("PRIVATE KEY", der.as_ref()), ecdh.clone()));
    }
    let x25519 = agreement::PrivateKey::generate(&agreement::X25519).expect("x25519");
    let seed: Curve25519SeedBin = x25519.as_be_bytes().expect("seed");
    let der = [&der::X25519_PKCS8_PREFIX[..], seed.as_ref()].concat();
    out.push(("X25519 PKCS#8", pem("PRIVATE KEY", &der), ecdh));
    for (name, len, algs) in [
        (
            "AES-128",
            16,
            vec![KeyManagement::A128Kw, KeyManagement::Dir],
        ),
        (
            "AES-256",
            32,
            vec![KeyManagement::A256Kw, KeyManagement::Dir],
        ),
        ("AES-384", 48, vec![KeyManagement::Dir]),
        ("AES-512", 64, vec![KeyManagement::Dir]),
    ] {
        let mut k = vec![0u8; len];
        aws_lc_rs::rand::fill(&mut k).expect("rng");
        out.push((
            name,
            json!({"kty": "oct", "k": B64.encode(&k)}).to_string(),
            algs,
        ));
    }
    out
}

#[test]
fn every_algorithm_pair_round_trips_with_generated_keys() {
    let mut pairs = 0;
    for (name, text, algs) in generated_keys() {
        let keys = parse_keys(text.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(keys.len(), 1, "{name}");
        let public = keys[0].public().expect("public half");
        let d = Decryptor::new(keys.clone(), true);
        for alg in algs {
            for enc in ContentEncryption::ALL {
                if alg == KeyManagement::Dir && !keys[0].fits(alg, enc) {
                    continue;
                }
                let token = encrypt(b"{\"sub\":\"user-1\"}", &public, alg, enc, Some("JWT"))
                    .unwrap_or_else(|e| panic!("{name} {alg} {enc}: {e}"));
                let out = d
                    .decrypt(&token)
                    .unwrap_or_else(|e| panic!("{name} {alg} {enc}: {e}"));
                assert_eq!(out.plaintext, b"{\"sub\":\"user-1\"}", "{name} {alg} {enc}");
                assert!(out.header.says_nested_jwt());
                pairs += 1;
            }
        }
    }
    // RSA 3 algs x 5 encs, 4 curves x 3 x 5, AES KW 2 x 5, dir: one enc per key size
    // (two for 32 bytes: A128CBC-HS256 and A256GCM).
    assert_eq!(pairs, 15 + 60 + 10 + 5);
}

#[test]
fn keys_are_chosen_by_kid_and_wrong_keys_fail_without_detail() {
    let keys = generated_keys();
    let rsa = &parse_keys(keys[0].1.as_bytes()).expect("rsa")[0];
    let other = parse_keys(generated_keys()[0].1.as_bytes()).expect("rsa")[0]
        .clone()
        .with_kid("other");
    let named = rsa.clone().with_kid("k1");
    let mut public = rsa.public().expect("public");
    public.kid = Some("k1".into());
    let token = encrypt(
        b"x",
        &public,
        KeyManagement::RsaOaep256,
        ContentEncryption::A256Gcm,
        None,
    )
    .expect("encrypts");

    // The named key among others decrypts.
    let d = Decryptor::new(vec![other.clone(), named.clone()], false);
    assert_eq!(d.decrypt(&token).expect("decrypts").key, "\"k1\"");

    // Only other kids: the key is not found.
    let err = Decryptor::new(vec![other.clone()], false)
        .decrypt(&token)
        .expect_err("no key");
    assert!(matches!(err, JweError::KeyNotFound { .. }), "{err:?}");
    assert_eq!(err.reason(), Reason::DecryptionKeyNotFound);

    // The right kid on the wrong key: decryption fails (RSA-OAEP and RSA1_5 alike).
    let impostor = other.clone().with_kid("k1");
    let err = Decryptor::new(vec![impostor.clone()], true)
        .decrypt(&token)
        .expect_err("wrong key");
    assert_eq!(err, JweError::Failed);
    let token1_5 = encrypt(
        b"x",
        &public,
        KeyManagement::Rsa1_5,
        ContentEncryption::A128CbcHs256,
        None,
    )
    .expect("encrypts");
    let err = Decryptor::new(vec![impostor], true)
        .decrypt(&token1_5)
        .expect_err("wrong key");
    assert_eq!(err, JweError::Failed);

    // A key restricted to another algorithm is not a candidate.
    let pinned = named.restricted_to(&[KeyManagement::RsaOaep]);
    let err = Decryptor::new(vec![pinned], false)
        .decrypt(&token)
        .expect_err("pinned elsewhere");
    assert!(matches!(err, JweError::KeyNotFound { .. }), "{err:?}");
}

#[test]
fn keys_a_token_does_not_name_are_tried_at_most_twice() {
    // Four RSA keys; tokens without kid (or with a kid no key has) are encrypted to each.
    let keys: Vec<DecryptionKey> = (0..4)
        .map(|i| {
            parse_keys(generated_keys()[0].1.as_bytes()).expect("rsa")[0]
                .clone()
                .with_kid(format!("k{i}"))
        })
        .collect();
    let d = Decryptor::new(keys.clone(), false);
    for (i, key) in keys.iter().enumerate() {
        let mut public = key.public().expect("public");
        for kid in [None, Some("unknown")] {
            public.kid = kid.map(str::to_owned);
            let token = encrypt(
                b"x",
                &public,
                KeyManagement::RsaOaep256,
                ContentEncryption::A256Gcm,
                None,
            )
            .expect("encrypts");
            let result = d.decrypt(&token);
            match (kid, i < MAX_UNNAMED_TRIES) {
                // An unknown kid is looked up among keys without kid: there are none.
                (Some(_), _) => assert!(
                    matches!(result, Err(JweError::KeyNotFound { .. })),
                    "{i}: {result:?}"
                ),
                (None, true) => assert!(result.is_ok(), "{i}: {result:?}"),
                // Beyond the bound: the same answer as any other wrong key.
                (None, false) => assert_eq!(result.err(), Some(JweError::Failed), "{i}"),
            }
        }
        // Named, any key of the set decrypts.
        public.kid = key.kid.clone();
        let token = encrypt(
            b"x",
            &public,
            KeyManagement::RsaOaep256,
            ContentEncryption::A256Gcm,
            None,
        )
        .expect("encrypts");
        assert!(d.decrypt(&token).is_ok(), "{i} named");
    }
}

#[test]
fn malformed_tokens_are_named() {
    let key = &example("5.8")["key"];
    let d = decryptor(key, false);
    let header = |json: &str| B64.encode(json);
    let cases = [
        ("a.b.c.d".to_string(), "segments"),
        (format!("{}.AA.AA.AA.AA", header("[1]")), "JSON object"),
        (
            format!("{}.AA.AA.AA.AA", header(r#"{"enc":"A128GCM"}"#)),
            "no alg",
        ),
        (
            format!(
                "{}.AA.AA.AA.AA",
                header(r#"{"alg":"A128KW","enc":"A128GCM","kid":5}"#)
            ),
            "must be a string",
        ),
        (
            format!(
                "{}.AA.AA.AA.AA",
                header(r#"{"alg":"A128KW","enc":"A128GCM"}"#)
            ),
            "12-byte iv",
        ),
        (
            format!(
                "{}.A=.AA.AA.AA",
                header(r#"{"alg":"A128KW","enc":"A128GCM"}"#)
            ),
            "base64url",
        ),
    ];
    for (token, expected) in cases {
        let err = d.decrypt(&token).expect_err(&token);
        assert!(
            matches!(&err, JweError::Malformed(m) if m.contains(expected)),
            "{token}: {err:?}"
        );
        assert_eq!(err.reason(), Reason::TokenMalformed);
    }
    let crit = format!(
        "{}.AA.AA.AA.AA",
        header(r#"{"alg":"A128KW","enc":"A128GCM","crit":["exp"],"exp":1}"#)
    );
    assert_eq!(
        d.decrypt(&crit).expect_err("crit").reason(),
        Reason::UnsupportedCriticalHeader
    );
}

#[test]
fn key_files_hold_pem_jwk_or_jwk_sets() {
    // PKCS#1 "RSA PRIVATE KEY" built from the RFC 7520 5.1 components.
    let jwk = &example("5.1")["key"];
    let member = |name: &str| {
        B64.decode(jwk[name].as_str().expect("member"))
            .expect("b64")
    };
    let parts: Vec<Vec<u8>> = ["n", "e", "d", "p", "q", "dp", "dq", "qi"]
        .iter()
        .map(|n| member(n))
        .collect();
    let refs: [&[u8]; 8] = std::array::from_fn(|i| parts[i].as_slice());
    let pkcs1 = pem("RSA PRIVATE KEY", &der::rsa_private_pkcs1(refs));
    let keys = parse_keys(pkcs1.as_bytes()).expect("PKCS#1 parses");
    assert_eq!(keys[0].describe(), "RSA-2048");
    let out = Decryptor::new(keys, true)
        .decrypt(example("5.1")["compact"].as_str().expect("compact"))
        .expect("decrypts with the PEM form of the same key");
    assert_eq!(out.key, "#1");

    // A JWK set with several keys keeps them all.
    let set =
        json!({"keys": [example("5.2")["key"], example("5.4")["key"], example("5.8")["key"]]});
    let keys = parse_keys(set.to_string().as_bytes()).expect("set parses");
    let kinds: Vec<String> = keys.iter().map(DecryptionKey::describe).collect();
    assert_eq!(kinds, ["RSA-4096", "EC P-384", "AES key (16 bytes)"]);
    assert_eq!(keys[0].algorithms(), [KeyManagement::RsaOaep]);

    let refused: Vec<(Value, KeyError)> = vec![
        (
            json!({"kty": "RSA", "n": jwk["n"], "e": "AQAB"}),
            KeyError::NotPrivate("RSA", "d"),
        ),
        (
            json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}),
            KeyError::NotPrivate("EC", "d"),
        ),
        (
            json!({"kty": "oct", "k": B64.encode([1u8; 16]), "use": "sig"}),
            KeyError::NotForEncryption,
        ),
        (
            json!({"kty": "oct", "k": B64.encode([1u8; 16]), "alg": "RSA-OAEP"}),
            KeyError::AlgorithmMismatch("RSA-OAEP".into()),
        ),
        (
            json!({"kty": "oct", "k": B64.encode([1u8; 20])}),
            KeyError::OctLength(20),
        ),
        (
            json!({"kty": "EC", "crv": "secp256k1", "d": "AA"}),
            KeyError::Unsupported("EC secp256k1".into()),
        ),
    ];
    for (jwk, expected) in refused {
        assert_eq!(
            DecryptionKey::from_jwk(&jwk).expect_err("refused"),
            expected
        );
    }
    // The public members must belong to the private key.
    let mut mismatched = example("5.5")["key"].clone();
    mismatched["x"] = example("5.4")["key"]["x"].clone();
    assert!(DecryptionKey::from_jwk(&mismatched).is_err());
    assert_eq!(
        parse_keys(b"not a key").expect_err("junk"),
        KeyError::Format
    );
    let many = json!({"keys": vec![example("5.8")["key"].clone(); key::MAX_KEYS + 1]});
    assert_eq!(
        parse_keys(many.to_string().as_bytes()).expect_err("too many"),
        KeyError::TooMany
    );
}

#[test]
fn ecdh_refuses_an_epk_off_the_curve_or_on_another_curve() {
    let key = DecryptionKey::from_jwk(&example("5.5")["key"]).expect("key");
    let public = key.public().expect("public");
    let token = encrypt(
        b"x",
        &public,
        KeyManagement::EcdhEs,
        ContentEncryption::A128Gcm,
        None,
    )
    .expect("encrypts");
    let d = Decryptor::new(vec![key], false);
    assert!(d.decrypt(&token).is_ok());
    let (header, rest) = token.split_once('.').expect("dot");
    let mut object: Value =
        serde_json::from_slice(&B64.decode(header).expect("b64")).expect("json");
    // Not on the curve.
    object["epk"]["y"] = Value::String(B64.encode([7u8; 32]));
    let bad = format!("{}.{rest}", B64.encode(object.to_string()));
    assert_eq!(d.decrypt(&bad).expect_err("off curve"), JweError::Failed);
    // Another curve's point.
    object["epk"] = example("5.4")["key"].clone();
    object["epk"].as_object_mut().expect("object").remove("d");
    let bad = format!("{}.{rest}", B64.encode(object.to_string()));
    assert_eq!(d.decrypt(&bad).expect_err("other curve"), JweError::Failed);
}
