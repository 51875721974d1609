use serde_json::json;

use super::*;
use crate::local_issuer::SigningKey;

fn rsa_jwk(bits_bytes: usize, e: &[u8]) -> serde_json::Value {
    let mut n = vec![0xc5u8; bits_bytes];
    n[bits_bytes - 1] |= 1;
    json!({"kty": "RSA", "kid": "k", "n": B64.encode(&n), "e": B64.encode(e)})
}

#[test]
fn generated_keys_round_trip_through_jwk_and_pem() {
    for key in [
        SigningKey::rsa("r", "RS256", 2048).expect("rsa"),
        SigningKey::ec("e", "ES256").expect("ec"),
        SigningKey::ec("e384", "ES384").expect("ec"),
        SigningKey::ed25519("d").expect("ed"),
    ] {
        let alg: Algorithm = key.alg.parse().expect("alg");
        let token = key.mint(&json!({"a": 1})).expect("mint");
        let (input, sig) = token.rsplit_once('.').expect("jws");
        let from_jwk = VerifyingKey::from_jwk(&key.jwk().expect("jwk")).expect("jwk parses");
        assert!(from_jwk.fits(alg), "{}", key.alg);
        assert!(
            from_jwk.verify(alg, input.as_bytes(), sig),
            "{} via jwk",
            key.alg
        );
        let from_pem =
            VerifyingKey::from_pem(None, &key.public_pem().expect("pem")).expect("pem parses");
        assert_eq!(from_pem.kind, from_jwk.kind);
        assert!(
            from_pem.verify(alg, input.as_bytes(), sig),
            "{} via pem",
            key.alg
        );
        assert!(!from_jwk.verify(alg, b"other input", sig));
    }
}

#[test]
fn weak_or_unfit_keys_are_refused() {
    let cases = vec![
        (
            "RSA 1024",
            rsa_jwk(128, &[1, 0, 1]),
            KeyError::RsaSize(1024),
        ),
        (
            "RSA 16384",
            rsa_jwk(2048, &[1, 0, 1]),
            KeyError::RsaSize(16384),
        ),
        ("RSA e=3", rsa_jwk(256, &[3]), KeyError::RsaExponent),
        ("RSA e=1", rsa_jwk(256, &[1]), KeyError::RsaExponent),
        (
            "RSA even e",
            rsa_jwk(256, &[1, 0, 0]),
            KeyError::RsaExponent,
        ),
        (
            "RSA huge e",
            rsa_jwk(256, &[1, 0, 0, 0, 0, 1]),
            KeyError::RsaExponent,
        ),
        (
            "RSA missing n",
            json!({"kty": "RSA", "e": "AQAB"}),
            KeyError::Encoding("n"),
        ),
        (
            "RSA padded n",
            json!({"kty": "RSA", "n": "AQAB==", "e": "AQAB"}),
            KeyError::Encoding("n"),
        ),
        (
            "oct",
            json!({"kty": "oct", "k": "c2VjcmV0"}),
            KeyError::Symmetric,
        ),
        (
            "enc use",
            json!({"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}),
            KeyError::NotForSignatures,
        ),
        (
            "key_ops sign only",
            json!({"kty": "RSA", "key_ops": ["sign"], "n": "AQAB", "e": "AQAB"}),
            KeyError::NotForSignatures,
        ),
        (
            "unknown kty",
            json!({"kty": "XYZ"}),
            KeyError::UnsupportedType("XYZ".into()),
        ),
        (
            "secp256k1",
            json!({"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA"}),
            KeyError::UnsupportedCurve("secp256k1".into()),
        ),
        (
            "EC point not on curve",
            json!({"kty": "EC", "crv": "P-256", "x": B64.encode([1u8; 32]), "y": B64.encode([2u8; 32])}),
            KeyError::InvalidPoint("P-256"),
        ),
        (
            "EC short x",
            json!({"kty": "EC", "crv": "P-256", "x": B64.encode([1u8; 31]), "y": B64.encode([2u8; 32])}),
            KeyError::InvalidPoint("P-256"),
        ),
        (
            "Ed448",
            json!({"kty": "OKP", "crv": "Ed448", "x": "AA"}),
            KeyError::UnsupportedCurve("Ed448".into()),
        ),
        (
            "not an object",
            json!("key"),
            KeyError::Shape("invalid type: string \"key\", expected struct JwkFields".into()),
        ),
    ];
    for (name, jwk, want) in cases {
        assert_eq!(
            VerifyingKey::from_jwk(&jwk).expect_err(name),
            want,
            "{name}"
        );
    }
}

#[test]
fn roca_moduli_and_published_private_keys_are_refused() {
    // Wycheproof's ROCA key (json_web_key_test.json, "rejectsKeyWithRocaVulnerability"): it
    // verifies nothing, from a key set or a PEM.
    let roca = json!({"kty": "RSA", "kid": "kid-rsa-roca-sign", "e": "AQAB",
        "n": crate::jwks::roca::tests::WYCHEPROOF_ROCA_N});
    assert_eq!(VerifyingKey::from_jwk(&roca).err(), Some(KeyError::Roca));
    let n = B64
        .decode(crate::jwks::roca::tests::WYCHEPROOF_ROCA_N)
        .expect("base64url");
    assert_eq!(
        VerifyingKey::rsa(None, &n, &[1, 0, 1]).err(),
        Some(KeyError::Roca)
    );
    // A set holding it and a good key keeps the good one and reports the other.
    let good = SigningKey::rsa("good", "RS256", 2048).expect("rsa");
    let set =
        crate::jwks::KeySet::from_jwks_value(&json!({"keys": [roca, good.jwk().expect("jwk")]}))
            .expect("one usable key");
    assert_eq!(set.len(), 1);
    assert_eq!(set.rejected[0].error, KeyError::Roca);
    assert!(set.rejected[0].error.to_string().contains("CVE-2017-15361"));

    // Private members in a public key set: the key leaked, so it is refused.
    let mut leaked = good.jwk().expect("jwk");
    leaked["d"] = json!("c2VjcmV0");
    assert_eq!(
        VerifyingKey::from_jwk(&leaked).err(),
        Some(KeyError::PrivateMaterial("d"))
    );
    let mut ec = SigningKey::ec("e", "ES256")
        .expect("ec")
        .jwk()
        .expect("jwk");
    ec["d"] = json!("c2VjcmV0");
    assert_eq!(
        VerifyingKey::from_jwk(&ec).err(),
        Some(KeyError::PrivateMaterial("d"))
    );
}

#[test]
fn jwk_alg_pins_the_key() {
    let key = SigningKey::rsa("r", "RS256", 2048).expect("rsa");
    let mut jwk = key.jwk().expect("jwk");
    jwk["alg"] = json!("PS256");
    let parsed = VerifyingKey::from_jwk(&jwk).expect("parses");
    assert!(parsed.fits(Algorithm::PS256));
    assert!(!parsed.fits(Algorithm::RS256));
    jwk["alg"] = json!("ES256");
    assert_eq!(
        VerifyingKey::from_jwk(&jwk).expect_err("mismatch"),
        KeyError::AlgorithmMismatch("ES256".into())
    );
    jwk["alg"] = json!("HS256");
    assert_eq!(
        VerifyingKey::from_jwk(&jwk).expect_err("mismatch"),
        KeyError::AlgorithmMismatch("HS256".into())
    );
}

#[test]
fn key_types_never_cross_algorithm_families() {
    let rsa = VerifyingKey::from_jwk(
        &SigningKey::rsa("r", "RS256", 2048)
            .expect("rsa")
            .jwk()
            .expect("jwk"),
    )
    .expect("rsa");
    let ec = VerifyingKey::from_jwk(
        &SigningKey::ec("e", "ES256")
            .expect("ec")
            .jwk()
            .expect("jwk"),
    )
    .expect("ec");
    let hmac = VerifyingKey::from_secret(None, &[7u8; 32]).expect("secret");
    for alg in [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ] {
        assert!(!rsa.fits(alg), "RSA must not fit {alg:?}");
    }
    assert!(!ec.fits(Algorithm::ES384));
    assert!(!ec.fits(Algorithm::HS256));
    assert!(hmac.fits(Algorithm::HS256));
    assert!(!hmac.fits(Algorithm::HS384));
    assert!(!hmac.fits(Algorithm::RS256));
    assert_eq!(
        VerifyingKey::from_secret(None, &[7u8; 31]).expect_err("short"),
        KeyError::SecretTooShort(31)
    );
}

#[test]
fn pem_garbage_is_refused() {
    assert!(matches!(
        VerifyingKey::from_pem(None, "not a pem"),
        Err(KeyError::Pem(_))
    ));
    let private = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIB4xuLbCWw8qnQs1EmRoFwkD6v4qO1DFDpvPOEEoFcKl\n-----END PRIVATE KEY-----\n";
    assert!(VerifyingKey::from_pem(None, private).is_err());
}
