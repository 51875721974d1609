use std::time::SystemTime;

use base64::Engine as _;
use serde_json::{Value, json};

use super::*;
use crate::fixtures::*;
use crate::jose::{self, B64};
use crate::local_issuer::{SigningKey, now_secs};

/// Validates with the trace off and on: the answer must be the same (a trace only records).
fn run(policy: &Policy, token: &str) -> Result<(), ValidationError> {
    let quiet = run_traced(policy, token, &mut Trace::off());
    let mut trace = Trace::on();
    let traced = run_traced(policy, token, &mut trace);
    assert_eq!(quiet, traced, "tracing changed the answer");
    if let Err(e) = &traced
        && let Some(failed) = trace.failure()
    {
        assert_eq!(failed.reason, Some(e.reason().as_str()), "{trace:?}");
    }
    quiet
}

fn run_traced(policy: &Policy, token: &str, trace: &mut Trace) -> Result<(), ValidationError> {
    let jws = jose::parse(token).map_err(ValidationError::Malformed)?;
    let (issuer, alg) = route(&jws, policy)?;
    let keys = issuer.keys.current().expect("inline keys are loaded");
    verify_signature(&jws, alg, &keys)?;
    check_claims(&jws.claims, issuer, policy, SystemTime::now(), trace)?;
    check_required(&jws.claims, policy, trace)
}

fn header(key: &SigningKey, extra: Value) -> Value {
    let mut h = json!({"alg": key.alg, "typ": "JWT", "kid": key.kid});
    for (k, v) in extra.as_object().expect("object") {
        if v.is_null() {
            h.as_object_mut().expect("object").remove(k);
        } else {
            h[k] = v.clone();
        }
    }
    h
}

fn mint(key: &SigningKey, claims: &Value) -> String {
    key.mint(claims).expect("mint")
}

/// Re-signs `token`'s header and payload with raw bytes as the signature.
fn with_signature(token: &str, signature: &[u8]) -> String {
    let (input, _) = token.rsplit_once('.').expect("jws");
    format!("{input}.{}", B64.encode(signature))
}

fn unsigned(header: Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        B64.encode(serde_json::to_vec(&header).expect("json")),
        B64.encode(serde_json::to_vec(claims).expect("json"))
    )
}

#[test]
fn valid_tokens_of_every_algorithm_pass() {
    let policy = mk_policy("p", "");
    for key in [&*RSA, &*RSA_PS, &*EC, &*ED] {
        assert_eq!(
            run(&policy, &mint(key, &good_claims())),
            Ok(()),
            "{}",
            key.alg
        );
    }
    // Audience as an array, one of which is accepted.
    let t = mint(&RSA, &claims_with(json!({"aud": ["other", AUDIENCE]})));
    assert_eq!(run(&policy, &t), Ok(()));
}

#[test]
fn every_failure_has_its_reason() {
    use crate::decision::Reason::*;
    let policy = mk_policy(
        "p",
        "{requiredClaims: [{name: scp, separator: ' ', values: [orders.read]}]}",
    );
    let now = now_secs();
    let good = good_claims();
    let rsa_pem = RSA.public_pem().expect("pem");
    let confused = SigningKey::hmac("rsa-1", "HS256", rsa_pem.as_bytes());
    let rogue_with_jku = ROGUE
        .mint_with_header(
            &header(
                &ROGUE,
                json!({"jku": "https://attacker.example/jwks", "kid": "attacker"}),
            ),
            &good,
        )
        .expect("mint");
    let ec_token = mint(&EC, &good);
    let ec_raw = B64
        .decode(ec_token.rsplit_once('.').expect("jws").1)
        .expect("b64");
    // The same ECDSA signature DER-encoded (as OpenSSL produces it): must not verify.
    let der = {
        let int = |b: &[u8]| {
            let mut v = b.to_vec();
            while v.len() > 1 && v[0] == 0 {
                v.remove(0);
            }
            if v[0] & 0x80 != 0 {
                v.insert(0, 0);
            }
            let mut out = vec![0x02, v.len() as u8];
            out.extend(v);
            out
        };
        let (r, s) = ec_raw.split_at(32);
        let body: Vec<u8> = [int(r), int(s)].concat();
        let mut out = vec![0x30, body.len() as u8];
        out.extend(body);
        out
    };
    let cases: Vec<(&str, String, crate::decision::Reason)> = vec![
        (
            "alg none",
            unsigned(json!({"alg": "none"}), &good),
            AlgorithmNotAllowed,
        ),
        (
            "alg None",
            unsigned(json!({"alg": "None"}), &good),
            AlgorithmNotAllowed,
        ),
        (
            "alg nOnE",
            unsigned(json!({"alg": "nOnE", "kid": "rsa-1"}), &good),
            AlgorithmNotAllowed,
        ),
        (
            "alg unknown",
            RSA.mint_with_header(&header(&RSA, json!({"alg": "RS1024"})), &good)
                .expect("mint"),
            AlgorithmNotAllowed,
        ),
        (
            "HS256 signed with the RSA public key",
            confused.mint(&good).expect("mint"),
            AlgorithmNotAllowed,
        ),
        ("jku pointing elsewhere", rogue_with_jku, KeyNotFound),
        (
            "rogue key with a trusted kid",
            mint(&ROGUE, &good),
            SignatureInvalid,
        ),
        (
            "ES256 header on an RSA kid",
            RSA.mint_with_header(&header(&RSA, json!({"alg": "ES256"})), &good)
                .expect("mint"),
            AlgorithmNotAllowed,
        ),
        (
            "no kid, no fitting key signature",
            ROGUE
                .mint_with_header(&header(&ROGUE, json!({"kid": null})), &good)
                .expect("mint"),
            SignatureInvalid,
        ),
        (
            "unknown crit",
            RSA.mint_with_header(&header(&RSA, json!({"crit": ["exp"], "exp": 1})), &good)
                .expect("mint"),
            UnsupportedCriticalHeader,
        ),
        (
            "tampered payload",
            {
                let t = mint(&RSA, &good);
                let other = mint(&RSA, &claims_with(json!({"sub": "forged-user"})));
                let parts: Vec<&str> = t.split('.').collect();
                let other_parts: Vec<&str> = other.split('.').collect();
                format!("{}.{}.{}", parts[0], other_parts[1], parts[2])
            },
            SignatureInvalid,
        ),
        (
            "ES256 DER signature",
            with_signature(&ec_token, &der),
            SignatureInvalid,
        ),
        (
            "ES256 short signature",
            with_signature(&ec_token, &ec_raw[..63]),
            SignatureInvalid,
        ),
        (
            "ES256 zero signature",
            with_signature(&ec_token, &[0u8; 64]),
            SignatureInvalid,
        ),
        (
            "empty signature",
            format!("{}.", mint(&RSA, &good).rsplit_once('.').expect("jws").0),
            SignatureInvalid,
        ),
        (
            "truncated",
            mint(&RSA, &good)[..40].to_string(),
            TokenMalformed,
        ),
        ("garbage", "not a token at all".into(), TokenMalformed),
        ("base64 garbage", "e30.e30.%%%%".into(), TokenMalformed),
        ("one megabyte", "a".repeat(1 << 20), TokenMalformed),
        (
            "claims bomb",
            mint(&RSA, &claims_with(json!({"bomb": "x".repeat(20_000)}))),
            TokenMalformed,
        ),
        ("JWE", "a.b.c.d.e".into(), TokenEncrypted),
        (
            "no iss",
            mint(&RSA, &claims_with(json!({"iss": null}))),
            IssuerNotAllowed,
        ),
        (
            "other iss",
            mint(&RSA, &claims_with(json!({"iss": "https://evil.example/"}))),
            IssuerNotAllowed,
        ),
        (
            "iss without slash",
            mint(
                &RSA,
                &claims_with(json!({"iss": "https://idp.example.com"})),
            ),
            IssuerNotAllowed,
        ),
        (
            "iss number",
            mint(&RSA, &claims_with(json!({"iss": 5}))),
            TokenMalformed,
        ),
        (
            "expired",
            mint(&RSA, &claims_with(json!({"exp": now - 31}))),
            TokenExpired,
        ),
        (
            "not yet valid",
            mint(&RSA, &claims_with(json!({"nbf": now + 120}))),
            TokenNotYetValid,
        ),
        (
            "issued in the future",
            mint(&RSA, &claims_with(json!({"iat": now + 120}))),
            TokenNotYetValid,
        ),
        (
            "no exp",
            mint(&RSA, &claims_with(json!({"exp": null}))),
            ExpirationMissing,
        ),
        (
            "exp as string",
            mint(&RSA, &claims_with(json!({"exp": (now + 60).to_string()}))),
            TokenMalformed,
        ),
        (
            "exp 2^63",
            mint(
                &RSA,
                &claims_with(json!({"exp": 9_223_372_036_854_775_807u64})),
            ),
            crate::decision::Reason::Valid,
        ),
        (
            "exp negative",
            mint(&RSA, &claims_with(json!({"exp": -1}))),
            TokenExpired,
        ),
        (
            "nbf as string",
            mint(&RSA, &claims_with(json!({"nbf": "0"}))),
            TokenMalformed,
        ),
        (
            "no aud",
            mint(&RSA, &claims_with(json!({"aud": null}))),
            AudienceMismatch,
        ),
        (
            "other aud",
            mint(&RSA, &claims_with(json!({"aud": "api://billing"}))),
            AudienceMismatch,
        ),
        (
            "empty aud array",
            mint(&RSA, &claims_with(json!({"aud": []}))),
            AudienceMismatch,
        ),
        (
            "aud object",
            mint(&RSA, &claims_with(json!({"aud": {"a": AUDIENCE}}))),
            TokenMalformed,
        ),
        (
            "aud number",
            mint(&RSA, &claims_with(json!({"aud": 7}))),
            TokenMalformed,
        ),
        (
            "required claim missing",
            mint(&RSA, &claims_with(json!({"scp": null}))),
            ClaimMismatch,
        ),
        (
            "required claim other value",
            mint(&RSA, &claims_with(json!({"scp": "billing.read"}))),
            ClaimMismatch,
        ),
    ];
    for (name, token, want) in cases {
        let got = run(&policy, &token).map_err(|e| e.reason());
        let got = got.err().unwrap_or(crate::decision::Reason::Valid);
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn clock_skew_is_honoured_both_ways() {
    let policy = mk_policy("p", "{clockSkew: 60s}");
    let now = now_secs();
    assert_eq!(
        run(&policy, &mint(&RSA, &claims_with(json!({"exp": now - 30})))),
        Ok(())
    );
    assert_eq!(
        run(&policy, &mint(&RSA, &claims_with(json!({"nbf": now + 30})))),
        Ok(())
    );
    assert!(run(&policy, &mint(&RSA, &claims_with(json!({"exp": now - 90})))).is_err());
    let strict = mk_policy("s", "{clockSkew: 0s}");
    assert!(run(&strict, &mint(&RSA, &claims_with(json!({"exp": now - 1})))).is_err());
}

#[test]
fn expiration_can_be_optional() {
    let policy = mk_policy("p", "{requireExpirationTime: false}");
    assert_eq!(
        run(&policy, &mint(&RSA, &claims_with(json!({"exp": null})))),
        Ok(())
    );
}

#[test]
fn algorithm_allowlist_is_per_issuer() {
    let mut spec = spec_with("");
    spec.issuers[0].algorithms = vec!["ES256".into()];
    let policy = try_compile("p", &spec).expect("compiles");
    assert_eq!(run(&policy, &mint(&EC, &good_claims())), Ok(()));
    let err = run(&policy, &mint(&RSA, &good_claims())).expect_err("RS256 not allowed");
    assert_eq!(err, ValidationError::AlgorithmNotAllowed("RS256".into()));
    let hint = err.hint(&policy, policy.issuers.first()).expect("hint");
    assert!(hint.contains("ES256"), "{hint}");
}

#[test]
fn keys_of_one_issuer_never_verify_another_issuers_tokens() {
    // Issuer A trusts RSA, issuer B trusts only EC. A token claiming B but signed by A's key fails.
    let spec = spec(&format!(
        "issuers:\n- {{issuer: https://a.example/, audiences: [{AUDIENCE}], jwks: {a}}}\n- {{issuer: https://b.example/, audiences: [{AUDIENCE}], jwks: {b}}}\n",
        a = crate::local_issuer::jwks(&[&RSA]),
        b = crate::local_issuer::jwks(&[&EC]),
    ));
    let policy = try_compile("p", &spec).expect("compiles");
    let as_b = mint(&RSA, &claims_with(json!({"iss": "https://b.example/"})));
    assert!(matches!(
        run(&policy, &as_b),
        Err(ValidationError::KeyNotFound(_))
    ));
    let as_a = mint(&RSA, &claims_with(json!({"iss": "https://a.example/"})));
    assert_eq!(run(&policy, &as_a), Ok(()));
}

#[test]
fn hmac_needs_a_shared_secret_of_sufficient_length() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "s".repeat(48);
    std::fs::write(dir.path().join("secret"), format!("{secret}\n")).expect("write");
    let spec = spec(&format!(
        "issuers:\n- issuer: {ISSUER}\n  audiences: [{AUDIENCE}]\n  sharedSecret: {{file: {}}}\n",
        dir.path().join("secret").display()
    ));
    let policy = try_compile("p", &spec).expect("compiles");
    let hs256 = SigningKey::hmac("h", "HS256", secret.as_bytes());
    let hs512 = SigningKey::hmac("h", "HS512", secret.as_bytes());
    let wrong = SigningKey::hmac("h", "HS256", "t".repeat(48).as_bytes());
    assert_eq!(
        run(&policy, &hs256.mint(&good_claims()).expect("mint")),
        Ok(())
    );
    // 48 bytes is too short for HS512 (RFC 7518 §3.2): no key fits.
    assert_eq!(
        run(&policy, &hs512.mint(&good_claims()).expect("mint")).map_err(|e| e.reason()),
        Err(crate::decision::Reason::AlgorithmNotAllowed)
    );
    assert_eq!(
        run(&policy, &wrong.mint(&good_claims()).expect("mint")).map_err(|e| e.reason()),
        Err(crate::decision::Reason::SignatureInvalid)
    );
    // An RSA-signed token is refused before any key is tried: RS256 is not allowed here.
    assert_eq!(
        run(&policy, &mint(&RSA, &good_claims())).map_err(|e| e.reason()),
        Err(crate::decision::Reason::AlgorithmNotAllowed)
    );
}

#[test]
fn descriptions_never_contain_the_token() {
    let policy = mk_policy("p", "");
    let token = mint(&ROGUE, &good_claims());
    let err = run(&policy, &token).expect_err("rogue");
    let signature = token.rsplit_once('.').expect("jws").1;
    assert!(!err.to_string().contains(signature));
    assert!(!err.to_string().contains(&token[..30]));
}

/// A policy whose one issuer (the trusted keys) has `maxTokenLifetime: 1h`.
fn lifetime_policy(extra: &str) -> Policy {
    let mut spec = spec_with(extra);
    spec.issuers[0].max_token_lifetime = Some("1h".into());
    try_compile("p", &spec).expect("compiles")
}

#[test]
fn max_token_lifetime_bounds_exp_minus_iat_or_exp_minus_now() {
    let now = now_secs();
    // 2^63: what an issuer that never wants a token to end signs.
    let far = json!(9_223_372_036_854_775_808u64);
    let policy = lifetime_policy("{clockSkew: 30s}");
    let optional_exp = lifetime_policy("{clockSkew: 30s, requireExpirationTime: false}");
    let cases = [
        (
            "exp - iat is the limit",
            &policy,
            json!({"iat": now - 10, "exp": now - 10 + 3600}),
            None,
        ),
        (
            "exp - iat a second over",
            &policy,
            json!({"iat": now - 10, "exp": now - 10 + 3601}),
            Some("exp - iat"),
        ),
        (
            "exp 2^63",
            &policy,
            json!({"iat": now - 10, "exp": far}),
            Some("exp - iat"),
        ),
        (
            "an old iat does not excuse a far exp",
            &policy,
            json!({"iat": now - 7200, "exp": now + 3600}),
            Some("exp - iat"),
        ),
        (
            "no iat, exp - now within the limit and skew",
            &policy,
            json!({"iat": null, "exp": now + 3620}),
            None,
        ),
        (
            "no iat, exp - now over the limit and skew",
            &policy,
            json!({"iat": null, "exp": now + 3700}),
            Some("exp - now"),
        ),
        (
            "no iat, exp 2^63",
            &policy,
            json!({"iat": null, "exp": far}),
            Some("exp - now"),
        ),
        (
            "no exp, issued within the limit",
            &optional_exp,
            json!({"exp": null, "iat": now - 3000}),
            None,
        ),
        (
            "no exp, issued before the limit",
            &optional_exp,
            json!({"exp": null, "iat": now - 3700}),
            Some("issued"),
        ),
        (
            "neither exp nor iat",
            &optional_exp,
            json!({"exp": null, "iat": null}),
            Some("neither"),
        ),
    ];
    for (name, policy, changes, want) in cases {
        let got = run(policy, &mint(&RSA, &claims_with(changes)));
        match want {
            None => assert_eq!(got, Ok(()), "{name}"),
            Some(fragment) => {
                let err = got.expect_err(name);
                assert_eq!(
                    err.reason(),
                    crate::decision::Reason::TokenLifetimeExceeded,
                    "{name}"
                );
                assert_eq!(err.check(), "lifetime", "{name}");
                assert!(err.to_string().contains(fragment), "{name}: {err}");
                let hint = err.hint(policy, policy.issuers.first()).expect("hint");
                assert!(
                    hint.contains("at most 1h") && hint.contains("maxTokenLifetime"),
                    "{hint}"
                );
            }
        }
    }
    // Without the limit, today's behaviour: a far exp passes.
    let unlimited = mk_policy("u", "");
    assert_eq!(
        run(&unlimited, &mint(&RSA, &claims_with(json!({"exp": far})))),
        Ok(())
    );
}

#[test]
fn the_lifetime_check_is_traced() {
    let policy = lifetime_policy("");
    let now = now_secs();
    let mut trace = Trace::on();
    let token = mint(
        &RSA,
        &claims_with(json!({"iat": now - 10, "exp": now + 1790})),
    );
    run_traced(&policy, &token, &mut trace).expect("passes");
    let step = trace
        .steps
        .iter()
        .find(|s| s.check == "lifetime")
        .expect("a lifetime step");
    assert_eq!(step.detail, "valid for 30m (exp - iat), at most 1h");
    // Without a limit there is no such step.
    let mut trace = Trace::on();
    run_traced(&mk_policy("u", ""), &token, &mut trace).expect("passes");
    assert!(trace.steps.iter().all(|s| s.check != "lifetime"));
}

#[test]
fn introspection_answers_meet_the_lifetime_limit_unless_they_carry_no_exp() {
    let policy = lifetime_policy("");
    let issuer = &policy.issuers[0];
    let now = now_secs();
    let claims = |v: Value| -> crate::jose::Claims { serde_json::from_value(v).expect("claims") };
    let check = |c: &crate::jose::Claims, without: AcceptWithout| {
        check_answer_claims(
            c,
            issuer,
            &policy,
            without,
            SystemTime::now(),
            &mut Trace::on(),
        )
    };
    let long = claims(json!({"aud": AUDIENCE, "iat": now, "exp": now + 86_400}));
    assert_eq!(
        check(&long, AcceptWithout::default()).map_err(|e| e.reason()),
        Err(crate::decision::Reason::TokenLifetimeExceeded)
    );
    assert_eq!(
        check(
            &long,
            AcceptWithout {
                aud: false,
                exp: true
            }
        )
        .map_err(|e| e.reason()),
        Err(crate::decision::Reason::TokenLifetimeExceeded),
        "an exp present is always checked"
    );
    // An answer without exp, accepted without it: the IdP's `active` bounds the token.
    let no_exp = claims(json!({"aud": AUDIENCE}));
    assert_eq!(
        check(
            &no_exp,
            AcceptWithout {
                aud: false,
                exp: true
            }
        ),
        Ok(())
    );
    let short = claims(json!({"aud": AUDIENCE, "iat": now, "exp": now + 600}));
    assert_eq!(check(&short, AcceptWithout::default()), Ok(()));
}

/// A policy with a `{tenant}` template (two tenants), sharing the trusted keys.
fn tenant_policy() -> Policy {
    let spec = spec(&format!(
        "issuers:\n- {{issuer: 'https://kc.example.com/realms/{{tenant}}', tenants: [acme, globex], audiences: [{AUDIENCE}], jwks: {jwks}}}\n",
        jwks = crate::local_issuer::jwks(&[&RSA]),
    ));
    try_compile("p", &spec).expect("compiles")
}

#[test]
fn a_template_admits_its_tenants_and_names_the_others() {
    let policy = tenant_policy();
    let of = |tenant: &str| {
        mint(
            &RSA,
            &claims_with(json!({"iss": format!("https://kc.example.com/realms/{tenant}")})),
        )
    };
    assert_eq!(run(&policy, &of("acme")), Ok(()));
    assert_eq!(run(&policy, &of("globex")), Ok(()));
    let err = run(&policy, &of("initech")).expect_err("not listed");
    assert_eq!(
        err,
        ValidationError::TenantNotAllowed {
            tenant: "initech".into(),
            template: "https://kc.example.com/realms/{tenant}".into()
        }
    );
    assert_eq!(err.reason(), crate::decision::Reason::IssuerNotAllowed);
    assert!(
        err.to_string()
            .contains("tenant \"initech\" is not allowed"),
        "{err}"
    );
    let hint = err.hint(&policy, None).expect("hint");
    assert!(
        hint.contains("spec.issuers[0].tenants allows [\"acme\", \"globex\"]")
            && hint.contains("add \"initech\""),
        "{hint}"
    );
    // Not of the template's shape: the plain refusal.
    let other = mint(
        &RSA,
        &claims_with(json!({"iss": "https://kc.example.com/other/acme"})),
    );
    assert!(matches!(
        run(&policy, &other),
        Err(ValidationError::IssuerNotAllowed(_))
    ));
    // The trace says which tenant the token resolved to.
    let mut trace = Trace::on();
    let globex = of("globex");
    let jws = jose::parse(&globex).expect("jws");
    let (issuer, _) = route(&jws, &policy).expect("routes");
    trace.pass("issuer", || describe_issuer(&policy, issuer));
    assert_eq!(
        trace.steps[0].detail,
        "https://kc.example.com/realms/globex is accepted: tenant \"globex\" of the issuer template https://kc.example.com/realms/{tenant} (spec.issuers[0].tenants)"
    );
}
