//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the fuzz targets'
//! bodies (`fuzz/harness.rs`), so every `cargo test` re-checks each seed and each finding that
//! became a regression input against the harness's reference model. `cargo fuzz run <target>`
//! explores further (see `fuzz/README.md`).
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

fn reason(decision: &Decision) -> Reason {
    match decision {
        Decision::Allow(a) => a.reason,
        Decision::Deny(d) => d.reason,
    }
}

fn assert_reaches(reasons: &[Reason], expected: &[Reason]) {
    for expected in expected {
        assert!(reasons.contains(expected), "{expected:?} in {reasons:?}");
    }
}

#[test]
fn token_corpus() {
    let reasons: Vec<Reason> = corpus("token")
        .iter()
        .flat_map(|(_, bytes)| harness::token(bytes))
        .map(|d| reason(&d))
        .collect();
    // The corpus reaches both sides of the oracle: valid tokens, and many reasons to deny.
    assert_reaches(
        &reasons,
        &[
            Reason::Valid,
            Reason::InsufficientScope,
            Reason::ClaimMismatch,
            Reason::SignatureInvalid,
            Reason::TokenExpired,
            Reason::TokenNotYetValid,
            Reason::ExpirationMissing,
            Reason::AudienceMismatch,
            Reason::AzureGraphToken,
            Reason::IssuerNotAllowed,
            Reason::AlgorithmNotAllowed,
            Reason::UnsupportedCriticalHeader,
            Reason::KeyNotFound,
            Reason::TokenMalformed,
            Reason::TokenNotSigned,
            Reason::DecryptionFailed,
            Reason::DecryptionKeyNotFound,
        ],
    );
}

#[test]
fn check_corpus() {
    let reasons: Vec<Reason> = corpus("check")
        .iter()
        .filter_map(|(_, bytes)| harness::check(bytes))
        .map(|d| reason(&d))
        .collect();
    assert_reaches(
        &reasons,
        &[
            Reason::Valid,
            Reason::Anonymous,
            Reason::InsufficientScope,
            Reason::TokenMissing,
            Reason::TokenMalformed,
            Reason::TokenExpired,
            Reason::AudienceMismatch,
            Reason::NoPolicy,
            Reason::PolicyNotFound,
            Reason::RequestMalformed,
        ],
    );
}

#[test]
fn jwe_corpus() {
    // Each seed is checked against the reference decryption; the corpus reaches all outcomes.
    let outcomes: Vec<_> = corpus("jwe")
        .iter()
        .filter_map(|(_, bytes)| harness::jwe(bytes))
        .collect();
    assert!(outcomes.iter().any(Result::is_ok), "a seed decrypts");
    assert!(
        outcomes
            .iter()
            .any(|o| o.as_ref().err() == Some(&tollgate::jwe::JweError::Failed)),
        "a seed fails after the key was chosen"
    );
    assert!(
        outcomes.iter().any(|o| matches!(
            o,
            Err(e) if *e != tollgate::jwe::JweError::Failed
        )),
        "a seed is refused before a key is chosen"
    );
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

/// The model reads request paths as the documented examples say.
#[test]
fn the_model_reads_paths_as_documented() {
    use harness::model::read_path;
    for (raw, want) in [
        ("/orders?x=1", "/orders"),
        ("/%6Frders", "/orders"),
        ("/%7Euser/%2Bplus%3A%40", "/~user/+plus:@"),
        ("/a%20b%3fc%23d", "/a%20b%3Fc%23d"),
        ("/100%25", "/100%25"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/a.b/..c/.../c..", "/a.b/..c/.../c.."),
        ("/Orders/", "/Orders/"),
    ] {
        assert_eq!(read_path(raw).as_deref(), Ok(want), "{raw}");
    }
    for raw in [
        "",
        "orders",
        "/a%2Fb",
        "/a\\b",
        "/a%5cb",
        "/a;x",
        "/a%3Bb",
        "/a/../b",
        "/%2e%2e/",
        "/a/.",
        "//a",
        "/a//b",
        "/%252e%252e/",
        "/%25%32%65%25%32%65/",
        "/a%zz",
        "/a%",
        "/a#b",
        "/a%00",
        "/a b",
        "/a%7f",
        "/caf\u{e9}",
        "/%C0%AF",
        "/%ED%A0%80",
        "/%C3/",
    ] {
        assert!(read_path(raw).is_err(), "{raw:?}");
    }
}

/// Writes the seed corpora. Run once after changing the harness, and commit the files.
#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn write_seeds() {
    use base64::Engine as _;
    use harness::jwe_ref::Enc;
    use prost::Message as _;
    use tollgate::jwe::{ContentEncryption, EncryptionKey, KeyManagement};
    use tollgate::proto::auth::CheckRequest;
    use tollgate::proto::core::{HeaderMap, HeaderValue};

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join(name), bytes).expect("write");
    };
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let key = jsonwebtoken::EncodingKey::from_ec_pem(harness::PRIVATE_PEM.as_bytes()).expect("key");
    // A JWS over header and claims exactly as written (duplicates, escapes, odd numbers).
    let mint_raw = |header: &str, claims: &str| {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let signature =
            jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::ES256)
                .expect("sign");
        format!("{input}.{signature}")
    };
    let mint = |header: serde_json::Value, claims: serde_json::Value| {
        mint_raw(&header.to_string(), &claims.to_string())
    };
    // Far in the future, so the seeds stay valid.
    let exp = 4_102_444_800_i64; // 2100-01-01
    let claims = |extra: serde_json::Value| {
        let mut c = json!({"iss": harness::ISSUER, "aud": harness::AUDIENCE, "sub": "user-1",
            "scp": "orders.read", "iat": 1_700_000_000, "exp": exp});
        for (k, v) in extra.as_object().expect("object") {
            if v.is_null() && k.starts_with('-') {
                c.as_object_mut().expect("object").remove(&k[1..]);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    // Claims as JSON text with `extra` members appended (raw, so names may repeat).
    let claims_with = |extra: &str| {
        let base = claims(json!({})).to_string();
        format!("{},{extra}}}", &base[..base.len() - 1])
    };
    let es256 = json!({"alg": "ES256", "kid": "k1", "typ": "JWT"});
    let es256_text = es256.to_string();
    let valid = mint(es256.clone(), claims(json!({})));
    let admin = mint(es256.clone(), claims(json!({"roles": ["admin"]})));
    let writer = mint(
        es256.clone(),
        claims(json!({"scp": "orders.read orders.write"})),
    );
    let auditor = mint(
        es256.clone(),
        claims(json!({"roles": ["auditor"], "scp": "orders.read orders.reports"})),
    );
    let expired = mint(es256.clone(), claims(json!({"exp": 1_700_000_100})));
    let other_aud = mint(es256.clone(), claims(json!({"aud": ["api://other"]})));
    // A valid signature, over another message.
    let (signed_input, _) = valid.rsplit_once('.').expect("jws");
    let (_, admin_signature) = admin.rsplit_once('.').expect("jws");
    let tampered = format!("{signed_input}.{admin_signature}");
    let seal = |plaintext: &[u8], alg: &str, enc: Enc, extra: &str| {
        let header = format!(
            r#"{{"alg":"{alg}","enc":"{}","kid":"{}"{extra}}}"#,
            enc.name(),
            harness::JWE_KID
        );
        harness::jwe_seal(plaintext, alg, enc, &header)
    };
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
    let encrypted_admin = seal(
        admin.as_bytes(),
        "A256KW",
        Enc::A256CbcHs512,
        r#","cty":"JWT""#,
    );
    let encrypted_dir = seal(valid.as_bytes(), "dir", Enc::A128CbcHs256, "");
    let deep = |levels: usize| {
        claims_with(&format!(
            r#""deep":{}1{}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        ))
    };
    let tokens: Vec<(&str, String)> = vec![
        ("valid", valid.clone()),
        ("admin", admin.clone()),
        ("writer", writer.clone()),
        ("auditor", auditor.clone()),
        (
            "gold",
            mint(es256.clone(), claims(json!({"billing": {"tier": "gold"}}))),
        ),
        (
            "gold-literal",
            mint(es256.clone(), claims(json!({"billing.tier": "gold"}))),
        ),
        (
            "gold-literal-null",
            mint(
                es256.clone(),
                claims(json!({"billing.tier": null, "billing": {"tier": "gold"}})),
            ),
        ),
        (
            "gold-nested-repeated",
            mint_raw(
                &es256_text,
                &claims_with(r#""billing":{"tier":"gold","tier":"tin"}"#),
            ),
        ),
        (
            "gold-nested-repeated-last",
            mint_raw(
                &es256_text,
                &claims_with(r#""billing":{"tier":"tin","tier":"gold"}"#),
            ),
        ),
        (
            "scope-array",
            mint(
                es256.clone(),
                claims(json!({"scp": ["orders.read", "orders.write"]})),
            ),
        ),
        (
            "scope-joined-array",
            mint(
                es256.clone(),
                claims(json!({"scp": ["orders.read orders.write"]})),
            ),
        ),
        (
            "scope-tab",
            mint(
                es256.clone(),
                claims(json!({"scp": "orders.read\torders.write"})),
            ),
        ),
        (
            "roles-string",
            mint(
                es256.clone(),
                claims(json!({"roles": "auditor", "scp": "orders.read orders.reports"})),
            ),
        ),
        (
            "roles-spaced",
            mint(es256.clone(), claims(json!({"roles": "auditor admin"}))),
        ),
        ("tampered", tampered),
        ("expired", expired.clone()),
        (
            "not-yet",
            mint(es256.clone(), claims(json!({"nbf": exp - 10}))),
        ),
        (
            "iat-future",
            mint(es256.clone(), claims(json!({"iat": exp - 10}))),
        ),
        ("no-exp", mint(es256.clone(), claims(json!({"-exp": null})))),
        (
            "exp-string",
            mint(es256.clone(), claims(json!({"exp": "4102444800"}))),
        ),
        (
            "exp-null",
            mint_raw(
                &es256_text,
                &claims(json!({}))
                    .to_string()
                    .replace(&format!(r#""exp":{exp}"#), r#""exp":null"#),
            ),
        ),
        (
            "exp-huge",
            mint_raw(
                &es256_text,
                &claims(json!({}))
                    .to_string()
                    .replace(&exp.to_string(), "1e300"),
            ),
        ),
        (
            "exp-beyond-f64",
            mint_raw(
                &es256_text,
                &claims(json!({}))
                    .to_string()
                    .replace(&exp.to_string(), "1e400"),
            ),
        ),
        ("other-aud", other_aud.clone()),
        ("no-aud", mint(es256.clone(), claims(json!({"-aud": null})))),
        ("aud-empty", mint(es256.clone(), claims(json!({"aud": []})))),
        (
            "aud-number",
            mint(
                es256.clone(),
                claims(json!({"aud": [harness::AUDIENCE, 7]})),
            ),
        ),
        (
            "aud-graph",
            mint(
                es256.clone(),
                claims(json!({"aud": [harness::AUDIENCE, "https://graph.microsoft.com/"]})),
            ),
        ),
        (
            "aud-object",
            mint(
                es256.clone(),
                claims(json!({"aud": {"aud": harness::AUDIENCE}})),
            ),
        ),
        (
            "aud-raw-value",
            mint(
                es256.clone(),
                claims(json!({"aud": {"$serde_json::private::RawValue": "\"api://fuzz\""}})),
            ),
        ),
        (
            "other-iss",
            mint(es256.clone(), claims(json!({"iss": "https://evil.test/"}))),
        ),
        ("iss-number", mint(es256.clone(), claims(json!({"iss": 1})))),
        (
            "iss-escaped",
            mint_raw(
                &es256_text,
                &claims(json!({})).to_string().replace(
                    "\"https://fuzz.tollgate.test/\"",
                    r#""https:\/\/fuzz.tollgate\u002etest\/""#,
                ),
            ),
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
            "es384",
            mint(json!({"alg": "ES384", "kid": "k1"}), claims(json!({}))),
        ),
        (
            "alg-lower",
            mint(json!({"alg": "es256", "kid": "k1"}), claims(json!({}))),
        ),
        (
            "crit",
            mint(
                json!({"alg": "ES256", "kid": "k1", "crit": ["exp"], "exp": 1}),
                claims(json!({})),
            ),
        ),
        (
            "crit-empty",
            mint(
                json!({"alg": "ES256", "kid": "k1", "crit": []}),
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
            "kid-number",
            mint(json!({"alg": "ES256", "kid": 1}), claims(json!({}))),
        ),
        ("no-kid", mint(json!({"alg": "ES256"}), claims(json!({})))),
        (
            "typ-number",
            mint(json!({"alg": "ES256", "typ": 1}), claims(json!({}))),
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
        ("deep-100", mint_raw(&es256_text, &deep(100))),
        ("deep-126", mint_raw(&es256_text, &deep(126))),
        ("deep-200", mint_raw(&es256_text, &deep(200))),
        (
            "repeated-claim",
            mint_raw(&es256_text, &claims_with(r#""iss":"https://evil.test/""#)),
        ),
        (
            "repeated-claim-escaped",
            mint_raw(
                &es256_text,
                &claims_with(r#""\u0069ss":"https://evil.test/""#),
            ),
        ),
        (
            "repeated-header",
            mint_raw(
                r#"{"alg":"ES256","kid":"k1","alg":"none"}"#,
                &claims(json!({})).to_string(),
            ),
        ),
        (
            "unicode",
            mint_raw(
                &es256_text,
                &claims_with(r#""name":"\ud83d\ude00 caf\u00e9""#),
            ),
        ),
        (
            "lone-surrogate",
            mint_raw(&es256_text, &claims_with(r#""name":"\ud83d""#)),
        ),
        ("encrypted", encrypted.clone()),
        ("encrypted-admin", encrypted_admin.clone()),
        ("encrypted-dir", encrypted_dir.clone()),
        (
            "encrypted-unsigned",
            seal(
                claims(json!({})).to_string().as_bytes(),
                "A256KW",
                Enc::A256Gcm,
                "",
            ),
        ),
        (
            "encrypted-twice",
            seal(
                encrypted.as_bytes(),
                "A256KW",
                Enc::A256Gcm,
                r#","cty":"JWT""#,
            ),
        ),
        (
            "encrypted-expired",
            seal(expired.as_bytes(), "dir", Enc::A256Gcm, ""),
        ),
        (
            "encrypted-other-kid",
            seal(valid.as_bytes(), "A256KW", Enc::A256Gcm, "").replacen(
                &b64(br#"{"alg":"A256KW","enc":"A256GCM","kid":"enc1"}"#),
                &b64(br#"{"alg":"A256KW","enc":"A256GCM","kid":"enc2"}"#),
                1,
            ),
        ),
        (
            "encrypted-tampered",
            harness::jwe_ref::flipped(&encrypted, 4).expect("tag"),
        ),
        (
            "encrypted-zip",
            seal(valid.as_bytes(), "A256KW", Enc::A256Gcm, r#","zip":"DEF""#),
        ),
        ("malformed", "e30.e30.e30.e30".to_string()),
        ("padding", format!("{valid}==")),
        ("too-large", format!("{valid}{}", "A".repeat(16 * 1024))),
    ];
    for (name, token) in &tokens {
        write("token", name, token.as_bytes());
    }

    let bearer = |token: &str| format!("Bearer {token}");
    let req = |method: &str, path: &str, token: Option<&str>| {
        let auth = token.map(bearer);
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| ("authorization", a))
            .into_iter()
            .collect();
        harness::request_with(method, path, &headers)
    };
    let with_http =
        |mut request: CheckRequest,
         change: &dyn Fn(&mut tollgate::proto::auth::attribute_context::HttpRequest)| {
            if let Some(h) = request
                .attributes
                .as_mut()
                .and_then(|a| a.request.as_mut())
                .and_then(|r| r.http.as_mut())
            {
                change(h);
            }
            request
        };
    let mut checks: Vec<(String, CheckRequest)> = vec![
        ("valid".into(), req("GET", "/orders", Some(&valid))),
        ("admin-path-user".into(), req("GET", "/admin", Some(&valid))),
        (
            "admin-path-admin".into(),
            harness::request("/admin", &[("authorization", &format!("bearer {admin}"))]),
        ),
        (
            "orders-admin-delete".into(),
            req("DELETE", "/orders/admin/1", Some(&admin)),
        ),
        ("no-token".into(), req("GET", "/orders", None)),
        (
            "two-tokens".into(),
            harness::request(
                "/orders",
                &[("authorization", &format!("Bearer {valid}, Bearer {admin}"))],
            ),
        ),
        (
            "basic".into(),
            harness::request("/orders", &[("authorization", "Basic dXNlcjpwYXNz")]),
        ),
        ("healthz".into(), req("GET", "/orders/healthz", None)),
        (
            "healthz-post".into(),
            req("POST", "/orders/healthz/x", None),
        ),
        ("preflight".into(), req("OPTIONS", "/orders/admin", None)),
        (
            "preflight-lower".into(),
            req("options", "/admin/billing", None),
        ),
        (
            "head-reports-auditor".into(),
            req("HEAD", "/orders/reports", Some(&auditor)),
        ),
        (
            "head-reports-user".into(),
            req("HEAD", "/orders/reports/1", Some(&valid)),
        ),
        (
            "post-reports-auditor".into(),
            req("POST", "/orders/reports", Some(&auditor)),
        ),
        ("write-user".into(), req("POST", "/orders", Some(&valid))),
        (
            "write-writer".into(),
            req("PATCH", "/orders/7", Some(&writer)),
        ),
        ("expired".into(), req("GET", "/orders", Some(&expired))),
        ("other-aud".into(), req("GET", "/orders", Some(&other_aud))),
        ("encrypted".into(), req("GET", "/orders", Some(&encrypted))),
        ("trace".into(), req("TRACE", "/orders", Some(&valid))),
        ("method-lower".into(), req("get", "/orders", Some(&valid))),
        ("method-empty".into(), req("", "/orders", Some(&valid))),
        ("outside".into(), req("GET", "/ordersx", Some(&valid))),
        ("root".into(), req("GET", "/", Some(&valid))),
        ("case-policy".into(), req("GET", "/ORDERS", Some(&valid))),
        (
            "case-rule".into(),
            req("GET", "/orders/ADMIN", Some(&valid)),
        ),
        (
            "case-same".into(),
            req("GET", "/orders/Items", Some(&valid)),
        ),
        (
            "case-escaped".into(),
            req("GET", "/orders/%41dmin", Some(&valid)),
        ),
        ("utf8".into(), req("GET", "/orders/caf%c3%a9", Some(&valid))),
        ("percent".into(), req("GET", "/orders/100%25", Some(&valid))),
        (
            "space-escaped".into(),
            req("GET", "/orders/a%20b", Some(&valid)),
        ),
        (
            "query".into(),
            req("GET", "/orders?x=1&y=/../admin#z", Some(&valid)),
        ),
        (
            "override-header".into(),
            harness::request(
                "/orders",
                &[
                    ("authorization", &bearer(&valid)),
                    ("x-http-method-override", "DELETE"),
                ],
            ),
        ),
        (
            "override-same".into(),
            harness::request(
                "/orders",
                &[
                    ("authorization", &bearer(&valid)),
                    ("x-http-method", " get "),
                ],
            ),
        ),
        (
            "override-anonymous".into(),
            harness::request("/orders/healthz", &[("x-method-override", "PUT")]),
        ),
        (
            "override-query".into(),
            req("GET", "/orders?_method=DELETE", Some(&valid)),
        ),
        (
            "override-query-encoded".into(),
            req("GET", "/orders?a=1&%5Fmethod=delete", Some(&valid)),
        ),
        (
            "override-query-same".into(),
            req("GET", "/orders?_method=GET", Some(&valid)),
        ),
        (
            "override-query-same-encoded".into(),
            req("GET", "/orders?_method=G%45T", Some(&valid)),
        ),
        // One mutation away from a `_method` parameter whose name is escaped.
        (
            "near-override-query-escaped".into(),
            req("GET", "/orders?_%6Dethod=GET", Some(&valid)),
        ),
        // One mutation away from `%25` followed by an escaped hex digit (decoded twice, a dot).
        (
            "near-double-encoding-escaped".into(),
            req("GET", "/orders/healthz/%25%32/admin", None),
        ),
    ];
    // A path of each refused class, each with the admin token: 400 whatever it carries.
    let long = format!("/orders/{}", "a".repeat(8 * 1024));
    for (name, path) in [
        ("dot", "/orders/healthz/../admin"),
        ("dot-encoded", "/orders/healthz/%2e%2e/admin"),
        ("dot-mixed", "/orders/healthz/.%2E/admin"),
        ("dot-single", "/orders/./admin"),
        ("encoded-slash", "/orders/healthz/..%2Fadmin"),
        ("backslash", "/orders/healthz\\..\\admin"),
        ("backslash-encoded", "/orders/healthz/..%5Cadmin"),
        ("parameters", "/orders/healthz/..;/admin"),
        ("parameters-encoded", "/orders/admin%3Bx"),
        ("empty-segment", "/orders//admin"),
        ("leading-empty", "//orders/admin"),
        ("double-encoding", "/orders/healthz/%252e%252e/admin"),
        ("fragment", "/orders/healthz#/../admin"),
        ("control", "/orders/%00"),
        ("newline", "/orders/%0d%0aadmin"),
        ("space", "/orders/a b"),
        ("del", "/orders/%7F"),
        ("raw-utf8", "/orders/caf\u{e9}"),
        ("overlong", "/orders/%C0%AE%C0%AE/admin"),
        ("bad-utf8", "/orders/%FF"),
        ("bad-escape", "/orders/%zz"),
        ("not-origin", "orders"),
        ("absolute", "http://api.fuzz.test/orders"),
        ("too-long", &long),
    ] {
        checks.push((format!("path-{name}"), req("GET", path, Some(&admin))));
    }
    checks.push((
        "other-host".into(),
        with_http(req("GET", "/orders", Some(&valid)), &|h| {
            h.host = "elsewhere.test".into()
        }),
    ));
    checks.push((
        "host-port-case".into(),
        with_http(req("GET", "/orders", Some(&valid)), &|h| {
            h.host = "API.Fuzz.Test.:8443".into()
        }),
    ));
    checks.push((
        "authority-only".into(),
        with_http(req("GET", "/orders", Some(&valid)), &|h| h.host.clear()),
    ));
    let mut explicit = with_http(req("GET", "/other", Some(&valid)), &|h| {
        h.host = "elsewhere.test".into()
    });
    if let Some(a) = explicit.attributes.as_mut() {
        a.context_extensions
            .insert(harness::POLICY_EXTENSION.into(), harness::POLICY_ID.into());
    }
    checks.push(("explicit".into(), explicit.clone()));
    if let Some(a) = explicit.attributes.as_mut() {
        a.context_extensions
            .insert(harness::POLICY_EXTENSION.into(), "other/policy".into());
    }
    checks.push(("explicit-unknown".into(), explicit));
    // Envoy's header_map (one entry per line, raw bytes) instead of the headers map.
    let header_map = |lines: Vec<(&str, String)>| {
        with_http(req("GET", "/orders", None), &move |h| {
            h.headers.clear();
            h.header_map = Some(HeaderMap {
                headers: lines
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: k.to_string(),
                        value: String::new(),
                        raw_value: v.clone().into_bytes(),
                    })
                    .collect(),
            });
        })
    };
    checks.push((
        "header-map".into(),
        header_map(vec![
            ("Authorization", bearer(&valid)),
            (":authority", harness::HOST.into()),
        ]),
    ));
    checks.push((
        "header-map-two".into(),
        header_map(vec![
            ("authorization", bearer(&valid)),
            ("Authorization", bearer(&admin)),
        ]),
    ));
    checks.push((
        "header-map-override".into(),
        header_map(vec![
            ("authorization", bearer(&writer)),
            ("X-HTTP-Method-Override", "DELETE".into()),
        ]),
    ));
    for (name, request) in &checks {
        write("check", name, &request.encode_to_vec());
    }
    write(
        "check",
        "no-attributes",
        &CheckRequest::default().encode_to_vec(),
    );

    // jwe: sealed by tollgate and by the harness, and each way to be refused or to fail.
    write("jwe", "a256kw-a256gcm", encrypted.as_bytes());
    if let Ok(token) = tollgate::jwe::encrypt(
        b"{\"sub\":\"user-1\"}",
        &jwe_key,
        KeyManagement::Dir,
        ContentEncryption::A128CbcHs256,
        None,
    ) {
        write("jwe", "dir-a128cbc", token.as_bytes());
    }
    write("jwe", "a256kw-a256cbc", encrypted_admin.as_bytes());
    write("jwe", "dir-a128cbc-harness", encrypted_dir.as_bytes());
    for (name, alg, enc, extra) in [
        ("a256kw-a192cbc", "A256KW", Enc::A192CbcHs384, ""),
        ("a256kw-a128gcm", "A256KW", Enc::A128Gcm, ""),
        (
            "dir-a256gcm",
            "dir",
            Enc::A256Gcm,
            r#","cty":"JWT","typ":"JWT""#,
        ),
        (
            "apu-apv",
            "A256KW",
            Enc::A256Gcm,
            r#","apu":"QWxpY2U","apv":"Qm9i""#,
        ),
        ("apu-bad", "A256KW", Enc::A256Gcm, r#","apu":"!!""#),
        ("zip", "A256KW", Enc::A256Gcm, r#","zip":"DEF""#),
        ("crit", "A256KW", Enc::A256Gcm, r#","crit":["exp"],"exp":1"#),
        ("crit-number", "A256KW", Enc::A256Gcm, r#","crit":[1]"#),
        ("cty-number", "A256KW", Enc::A256Gcm, r#","cty":1"#),
        ("repeated", "A256KW", Enc::A256Gcm, r#","alg":"dir""#),
    ] {
        write("jwe", name, seal(b"hello", alg, enc, extra).as_bytes());
    }
    let no_kid = harness::jwe_seal(
        b"no kid",
        "A256KW",
        Enc::A256Gcm,
        r#"{"alg":"A256KW","enc":"A256GCM"}"#,
    );
    write("jwe", "no-kid", no_kid.as_bytes());
    for (name, header) in [
        (
            "other-kid",
            r#"{"alg":"A256KW","enc":"A256GCM","kid":"enc2"}"#,
        ),
        ("a128kw", r#"{"alg":"A128KW","enc":"A256GCM","kid":"enc1"}"#),
        ("rsa1_5", r#"{"alg":"RSA1_5","enc":"A256GCM","kid":"enc1"}"#),
        (
            "ecdh-es",
            r#"{"alg":"ECDH-ES","enc":"A256GCM","kid":"enc1"}"#,
        ),
        (
            "dir-a256cbc",
            r#"{"alg":"dir","enc":"A256CBC-HS512","kid":"enc1"}"#,
        ),
        (
            "unknown-enc",
            r#"{"alg":"A256KW","enc":"A512GCM","kid":"enc1"}"#,
        ),
    ] {
        // Sealed under another header: refused before a key is chosen.
        let sealed = harness::jwe_seal(
            b"x",
            "A256KW",
            Enc::A256Gcm,
            r#"{"alg":"A256KW","enc":"A256GCM"}"#,
        );
        let rest = sealed.split_once('.').expect("jwe").1;
        write(
            "jwe",
            name,
            format!("{}.{rest}", b64(header.as_bytes())).as_bytes(),
        );
    }
    // Failures after the key was chosen: all must look the same.
    write(
        "jwe",
        "tampered-tag",
        harness::jwe_ref::flipped(&no_kid, 4)
            .expect("tag")
            .as_bytes(),
    );
    write(
        "jwe",
        "tampered-ciphertext",
        harness::jwe_ref::flipped(&encrypted_admin, 3)
            .expect("ct")
            .as_bytes(),
    );
    write(
        "jwe",
        "tampered-key",
        harness::jwe_ref::flipped(&no_kid, 1)
            .expect("key")
            .as_bytes(),
    );
    let dir = seal(b"dir", "dir", Enc::A256Gcm, "");
    let mut parts: Vec<&str> = dir.split('.').collect();
    parts[1] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    write("jwe", "dir-with-key", parts.join(".").as_bytes());
    let zip = format!(
        "{}.{}",
        b64(br#"{"alg":"A256KW","enc":"A256GCM","kid":"enc1","zip":"DEF"}"#),
        encrypted.split_once('.').expect("jwe").1
    );
    write("jwe", "zip-tollgate", zip.as_bytes());
    write("jwe", "five-empty", b"....");

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
        (
            "anonymous-case",
            "apiVersion: tollgate.dev/v1alpha1\nkind: JwtPolicy\nmetadata: {name: c, namespace: x}\nspec:\n  match: {hosts: [api.fuzz.test], pathCase: IgnoreCase}\n  issuers: [{issuer: 'https://idp.example.com/', audiences: [x], jwksUri: 'https://idp.example.com/jwks'}]\n  rules:\n  - {paths: [/Public, /orders/healthz], allowAnonymous: true}\n  - {paths: [/], methods: [OPTIONS], allowAnonymous: true}\n",
        ),
    ];
    for (name, text) in policies {
        write("policy", name, text.as_bytes());
    }
}
