//! Hostile tokens, each judged by the whole engine: the exact reason code, no panic, and never
//! an allow for anything the trusted keys did not sign.

use base64::Engine as _;

use super::*;
use crate::jose::B64;
use crate::local_issuer::{SigningKey, jwks};

const PLAIN: &str = "{match: {hosts: [api.example.com]}}";

/// A compact JWS from raw header and payload text and raw signature bytes.
fn raw(header: &str, payload: &str, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        B64.encode(header),
        B64.encode(payload),
        B64.encode(signature)
    )
}

/// A token signed by `key` with this header, claims from `good_claims` changed by `changes`.
fn signed(key: &SigningKey, header: serde_json::Value, changes: serde_json::Value) -> String {
    key.mint_with_header(&header, &claims_with(changes))
        .expect("mint")
}

async fn reason_of(token: &str) -> Reason {
    let s = snapshot(&[mk_policy("plain", PLAIN)], DefaultAction::Deny);
    match decide(&s, &req("/").bearer(token)).await {
        Decision::Deny(deny) => deny.reason,
        Decision::Allow(allow) => allow.reason,
    }
}

fn claims_json() -> String {
    good_claims().to_string()
}

#[tokio::test]
async fn unsigned_tokens_are_refused_whatever_the_spelling() {
    for alg in ["none", "None", "nOnE", "NONE"] {
        let token = format!(
            "{}.{}.",
            B64.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#)),
            B64.encode(claims_json())
        );
        assert_eq!(
            reason_of(&token).await,
            Reason::AlgorithmNotAllowed,
            "{alg}"
        );
        // With a signature segment made of anything, too.
        let token = raw(&format!(r#"{{"alg":"{alg}"}}"#), &claims_json(), b"x");
        assert_eq!(
            reason_of(&token).await,
            Reason::AlgorithmNotAllowed,
            "{alg}"
        );
    }
}

#[tokio::test]
async fn an_hmac_signed_with_the_public_key_is_not_accepted() {
    // Algorithm confusion: HS256 keyed with the RSA public key a verifier might hold.
    let public = RSA.public_pem().expect("pem");
    for secret in [
        public.as_bytes().to_vec(),
        RSA.jwk().expect("jwk").to_string().into_bytes(),
    ] {
        let forged = SigningKey::hmac("rsa-1", "HS256", &secret);
        let token = forged.mint(&good_claims()).expect("mint");
        assert_eq!(reason_of(&token).await, Reason::AlgorithmNotAllowed);
    }
}

#[tokio::test]
async fn hostile_kids_find_no_key() {
    let long = "k".repeat(10 * 1024);
    for kid in [
        "../../../../etc/passwd",
        "' OR '1'='1' --",
        "rsa-1\0",
        long.as_str(),
    ] {
        let token = signed(&RSA, json!({"alg": "RS256", "kid": kid}), json!({}));
        assert_eq!(reason_of(&token).await, Reason::KeyNotFound, "{:.40}", kid);
    }
    for kid in [
        json!(42),
        json!(["rsa-1"]),
        json!({"kid": "rsa-1"}),
        json!(null),
    ] {
        let token = signed(&RSA, json!({"alg": "RS256", "kid": kid}), json!({}));
        assert_eq!(reason_of(&token).await, Reason::TokenMalformed, "{kid}");
    }
}

#[tokio::test]
async fn keys_named_by_the_token_are_never_used() {
    // Signed by a key nobody trusts, which the header offers in every way JOSE allows, with the
    // trusted key's kid: the signature is checked with the trusted key, and fails.
    let rogue = ROGUE.jwk().expect("jwk");
    for (member, value) in [
        ("jwk", rogue.clone()),
        ("jku", json!("https://attacker.example/jwks.json")),
        ("x5u", json!("https://attacker.example/cert.pem")),
        (
            "x5c",
            json!(["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]),
        ),
    ] {
        let mut header = json!({"alg": "RS256", "kid": "rsa-1"});
        header[member] = value;
        let token = signed(&ROGUE, header, json!({}));
        assert_eq!(
            reason_of(&token).await,
            Reason::SignatureInvalid,
            "{member}"
        );
    }
}

#[tokio::test]
async fn critical_extensions_are_refused() {
    for (crit, expected) in [
        (json!(["exp"]), Reason::UnsupportedCriticalHeader),
        (json!(["b64"]), Reason::UnsupportedCriticalHeader),
        // RFC 7515 forbids an empty list: refused as a critical header all the same.
        (json!([]), Reason::UnsupportedCriticalHeader),
        (json!("exp"), Reason::TokenMalformed),
    ] {
        let token = signed(
            &RSA,
            json!({"alg": "RS256", "kid": "rsa-1", "crit": crit}),
            json!({}),
        );
        assert_eq!(reason_of(&token).await, expected, "{crit}");
    }
}

#[tokio::test]
async fn malformed_encodings_and_json_are_token_malformed() {
    let header = r#"{"alg":"RS256","kid":"rsa-1"}"#;
    let body = claims_json();
    let sig = [7u8; 256];
    let nested = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let cases: Vec<(&str, String)> = vec![
        (
            "duplicate member",
            raw(
                header,
                &body.replacen('{', r#"{"iss":"https://evil/","#, 1),
                &sig,
            ),
        ),
        (
            "duplicate header member",
            raw(r#"{"alg":"RS256","alg":"none"}"#, &body, &sig),
        ),
        (
            "nested 200 deep",
            raw(header, &format!(r#"{{"x":{nested}}}"#), &sig),
        ),
        ("payload not an object", raw(header, "[1,2,3]", &sig)),
        ("header not JSON", raw("RS256", &body, &sig)),
        ("padding", format!("{}=", raw(header, &body, &sig))),
        (
            "standard base64",
            raw(header, &body, &sig).replace('-', "+").replace('_', "/") + "+/",
        ),
        (
            "two segments",
            format!("{}.{}", B64.encode(header), B64.encode(&body)),
        ),
        ("four segments", format!("{}.x", raw(header, &body, &sig))),
        ("empty segments", "..".to_string()),
        (
            "larger than 16 KiB",
            raw(
                header,
                &format!(r#"{{"x":"{}"}}"#, "a".repeat(17 * 1024)),
                &sig,
            ),
        ),
    ];
    for (what, token) in cases {
        let reason = reason_of(&token).await;
        assert_eq!(reason, Reason::TokenMalformed, "{what}");
    }
    // Bytes that are not UTF-8 in the payload.
    let token = format!(
        "{}.{}.{}",
        B64.encode(header),
        B64.encode([0xff, 0xfe, b'{', b'}']),
        B64.encode(sig)
    );
    assert_eq!(reason_of(&token).await, Reason::TokenMalformed);
}

#[tokio::test]
async fn time_claims_of_the_wrong_type_or_range() {
    let cases = [
        (json!({"exp": "4102444800"}), Reason::TokenMalformed),
        (json!({"exp": true}), Reason::TokenMalformed),
        (json!({"exp": [1]}), Reason::TokenMalformed),
        (json!({"nbf": "0"}), Reason::TokenMalformed),
        (json!({"iat": {"t": 1}}), Reason::TokenMalformed),
        (json!({"exp": -1}), Reason::TokenExpired),
        (json!({"exp": 0}), Reason::TokenExpired),
        (json!({"exp": i64::MIN}), Reason::TokenExpired),
        (
            json!({"nbf": 9_223_372_036_854_775_807_i64}),
            Reason::TokenNotYetValid,
        ),
        (json!({"iat": 1e300}), Reason::TokenNotYetValid),
        // A NumericDate may be a float, and far in the future: valid, if unusual.
        (json!({"exp": 4_102_444_800.5}), Reason::Valid),
        (json!({"exp": 9_223_372_036_854_775_807_i64}), Reason::Valid),
        (json!({"exp": null}), Reason::ExpirationMissing),
    ];
    for (changes, expected) in cases {
        let token = signed(
            &RSA,
            json!({"alg": "RS256", "kid": "rsa-1"}),
            changes.clone(),
        );
        assert_eq!(reason_of(&token).await, expected, "{changes}");
    }
    // Out of the range of a double: not even JSON that serde accepts.
    let body = claims_json().replacen('{', r#"{"exp":1e400,"#, 1);
    let input = format!(
        "{}.{}",
        B64.encode(r#"{"alg":"RS256","kid":"rsa-1"}"#),
        B64.encode(body)
    );
    let signature = RSA.sign(input.as_bytes()).expect("sign");
    let token = format!("{input}.{}", B64.encode(signature));
    assert_eq!(reason_of(&token).await, Reason::TokenMalformed);
}

#[tokio::test]
async fn audiences_of_the_wrong_type() {
    for (aud, expected) in [
        (json!({"aud": "api://orders"}), Reason::TokenMalformed),
        (json!(42), Reason::TokenMalformed),
        (json!(["api://orders", 42]), Reason::TokenMalformed),
        (json!([]), Reason::AudienceMismatch),
        (json!(["api://other"]), Reason::AudienceMismatch),
    ] {
        let token = signed(
            &RSA,
            json!({"alg": "RS256", "kid": "rsa-1"}),
            json!({"aud": aud}),
        );
        assert_eq!(reason_of(&token).await, expected, "{aud}");
    }
    // Without aud at all (`null` removes the claim).
    let token = signed(
        &RSA,
        json!({"alg": "RS256", "kid": "rsa-1"}),
        json!({"aud": null}),
    );
    assert_eq!(reason_of(&token).await, Reason::AudienceMismatch);
}

#[tokio::test]
async fn es256_signatures_must_be_raw_and_64_bytes() {
    let token = signed(&EC, json!({"alg": "ES256", "kid": "ec-1"}), json!({}));
    assert_eq!(reason_of(&token).await, Reason::Valid);
    let (input, signature) = token.rsplit_once('.').expect("jws");
    let raw_sig = B64.decode(signature).expect("b64");
    assert_eq!(raw_sig.len(), 64);
    // The same r and s as DER (what OpenSSL emits), and truncated or padded raw forms.
    let der = {
        fn int(bytes: &[u8]) -> Vec<u8> {
            let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
            let mut v = if trimmed.first().is_some_and(|b| b & 0x80 != 0) {
                vec![0]
            } else {
                vec![]
            };
            v.extend(trimmed);
            let mut out = vec![0x02, v.len() as u8];
            out.extend(v);
            out
        }
        let (r, s) = raw_sig.split_at(32);
        let body: Vec<u8> = int(r).into_iter().chain(int(s)).collect();
        let mut out = vec![0x30, body.len() as u8];
        out.extend(body);
        out
    };
    for bad in [
        der,
        raw_sig[..63].to_vec(),
        [raw_sig.clone(), vec![0]].concat(),
        vec![0; 64],
    ] {
        let forged = format!("{input}.{}", B64.encode(&bad));
        assert_eq!(
            reason_of(&forged).await,
            Reason::SignatureInvalid,
            "{} bytes",
            bad.len()
        );
    }
}

#[test]
fn oversized_policies_are_refused_with_the_field_and_the_limit() {
    let rules: Vec<String> = (0..10_000)
        .map(|i| format!("{{paths: [/r{i}], requiredClaims: [{{name: roles, values: [r{i}]}}]}}"))
        .collect();
    let hosts: Vec<String> = (0..10_000).map(|i| format!("h{i}.example.com")).collect();
    let spec = spec_with(&format!(
        "{{match: {{hosts: [{}]}}, rules: [{}]}}",
        hosts.join(", "),
        rules.join(", ")
    ));
    let error = try_compile("huge", &spec).expect_err("over the limits");
    let text = error.to_string();
    assert!(
        text.contains("spec.rules") && text.contains("10000 entries; at most 1000 are allowed"),
        "{text}"
    );
    assert!(
        text.contains("spec.match.hosts") && text.contains("at most 1000"),
        "{text}"
    );
}

#[tokio::test]
async fn a_thousand_rules_and_path_bombs_are_judged_in_bounded_work() {
    // The most rules a policy may have: routing stays a linear scan over prefixes (no regular
    // expressions anywhere, so nothing can backtrack).
    let rules: Vec<String> = (0..1000)
        .map(|i| format!("{{paths: [/r{i}/x], requiredClaims: [{{name: roles, values: [r{i}]}}]}}"))
        .collect();
    let policy = mk_policy(
        "rules",
        &format!(
            "{{match: {{hosts: [api.example.com]}}, rules: [{}]}}",
            rules.join(", ")
        ),
    );
    let s = snapshot(&[policy], DefaultAction::Deny);
    let token = RSA.mint(&good_claims()).expect("mint");
    let deny = decide(&s, &req("/r999/x/1").bearer(&token)).await;
    assert_eq!(denied(&deny).reason, Reason::InsufficientScope);
    let allow = decide(&s, &req("/elsewhere").bearer(&token)).await;
    assert!(matches!(allow, Decision::Allow(_)));

    // Paths built to be expensive: tens of thousands of dot segments, encoded dots and slashes,
    // invalid percent escapes. Each is normalized once, and none escapes into a rule's path.
    let bombs = [
        format!("/r7/x{}", "/..".repeat(20_000)),
        format!("/r7/x/{}", "%2e%2e/".repeat(20_000)),
        format!("/{}", "%".repeat(50_000)),
        format!("/r7/x{}", "/./".repeat(20_000)),
        format!("/{}r7/x", "/".repeat(50_000)),
    ];
    for path in &bombs {
        let decision = decide(&s, &req(path).bearer(&token)).await;
        // The decision is the one for the path the upstream will see.
        let expected = match crate::policy::route::read_path(path) {
            Err(_) => Reason::RequestMalformed,
            Ok(normal) if normal == "/r7/x" || normal.starts_with("/r7/x/") => {
                Reason::InsufficientScope
            }
            Ok(_) => Reason::Valid,
        };
        let got = match &decision {
            Decision::Allow(allow) => allow.reason,
            Decision::Deny(deny) => deny.reason,
        };
        assert_eq!(got, expected, "{}", &path[..40]);
    }
}

#[test]
fn metadata_addresses_in_policies_are_refused_unless_allowed() {
    for (field, extra) in [
        (
            "spec.issuers[0].jwksUri",
            r#"{issuers: [{issuer: "https://idp.example.com/", audiences: [a], jwksUri: "http://169.254.169.254/latest/meta-data/", allowInsecureHttp: true}]}"#,
        ),
        (
            "spec.issuers[0].discovery",
            r#"{issuers: [{issuer: "https://idp.example.com/", audiences: [a], discovery: "https://metadata.google.internal/computeMetadata/v1/"}]}"#,
        ),
        (
            "spec.issuers[0].jwksUri",
            r#"{issuers: [{issuer: "https://idp.example.com/", audiences: [a], jwksUri: "https://[fd00:ec2::254]/keys"}]}"#,
        ),
    ] {
        let refused = spec(&format!(
            "{{match: {{hosts: [api.example.com]}}, {}}}",
            &extra[1..extra.len() - 1]
        ));
        let error = try_compile("meta", &refused).expect_err(field);
        let text = error.to_string();
        assert!(
            text.contains(field) && text.contains("allowMetadataAddresses: true"),
            "{text}"
        );
        // The escape hatch, for an IdP that really lives on a link-local address.
        let allowed = extra.replace("}]}", ", allowMetadataAddresses: true}]}");
        let permitted = spec(&format!(
            "{{match: {{hosts: [api.example.com]}}, {}}}",
            &allowed[1..allowed.len() - 1]
        ));
        assert!(try_compile("meta", &permitted).is_ok(), "{allowed}");
    }
}

/// A key set whose only key has no `kid`: a token naming the new key of a rotation is tried
/// against it in vain, and that refetches the set like any unknown `kid` (the key without a
/// `kid` does not hold the rotation up until the next scheduled refresh).
#[tokio::test]
async fn a_key_without_kid_does_not_block_the_refetch_after_a_rotation() {
    use crate::jwks::{FetchSettings, Fetcher, KeySources, RefreshSettings};
    use crate::local_issuer::server::IdpServer;

    let old = SigningKey::rsa("old", "RS256", 2048).expect("key");
    let new = SigningKey::rsa("new", "RS256", 2048).expect("key");
    let mut keyless = old.jwk().expect("jwk");
    keyless.as_object_mut().expect("object").remove("kid");
    let idp = IdpServer::start(
        "127.0.0.1:0".parse().expect("addr"),
        json!({"keys": [keyless]}),
    )
    .await
    .expect("idp");
    let sources = KeySources::new(
        Fetcher::new(FetchSettings::default()).expect("fetcher"),
        RefreshSettings {
            miss_refetch_interval: std::time::Duration::ZERO,
            ..RefreshSettings::default()
        },
    );
    let policy = Arc::new(
        crate::fixtures::compile_with(
            &sources,
            "test",
            "rotating",
            &spec(&format!(
                "issuers:\n- issuer: {ISSUER}\n  audiences: [{AUDIENCE}]\n  jwksUri: http://{}/jwks\n  allowInsecureHttp: true\n",
                idp.addr()
            )),
        )
        .expect("compiles"),
    );
    let s = Snapshot::build(vec![policy], DefaultAction::Deny).0;
    let claims = good_claims();
    // The old key, without kid, verifies tokens without kid.
    let mut header_less = old.mint(&claims).expect("mint");
    assert!(matches!(
        decide(&s, &req("/").bearer(&header_less)).await,
        Decision::Allow(_)
    ));
    // Rotation: the IdP now publishes the new key; a token naming it passes at once.
    idp.set_jwks(jwks(&[&new]));
    let rotated = new.mint(&claims).expect("mint");
    let decision = decide(&s, &req("/").bearer(&rotated)).await;
    assert!(matches!(decision, Decision::Allow(_)), "{decision:?}");
    // A token naming a kid nobody publishes is still refused, as key_not_found after the
    // refetch or signature_invalid, never allowed.
    header_less = ROGUE.mint(&claims).expect("mint");
    assert!(matches!(
        decide(&s, &req("/").bearer(&header_less)).await,
        Decision::Deny(_)
    ));
}

fn reason(decision: &Decision) -> Reason {
    match decision {
        Decision::Allow(allow) => allow.reason,
        Decision::Deny(deny) => deny.reason,
    }
}

/// `/orders/Admin/1` reaches the admin handler of an upstream that routes case-insensitively
/// (ASP.NET, IIS), and another handler of one that does not. Unless the policy says which, a
/// path whose rule depends on letter case is refused.
#[tokio::test]
async fn letter_case_is_settled_by_the_policy_or_refused() {
    let rules = "rules: [{paths: [/orders/admin], requiredClaims: [{name: roles, values: [admin]}]}, {paths: [/orders/healthz], allowAnonymous: true}]";
    let user = RSA.mint(&good_claims()).expect("mint");
    let cases = [
        // (pathCase, path, expected reason for a non-admin token)
        ("", "/orders/admin/1", Reason::InsufficientScope),
        ("", "/orders/Admin/1", Reason::RequestMalformed),
        ("", "/ORDERS/healthz", Reason::RequestMalformed),
        ("", "/orders/Other/1", Reason::Valid),
        ("pathCase: Exact,", "/orders/Admin/1", Reason::Valid),
        ("pathCase: Exact,", "/orders/HEALTHZ", Reason::Valid),
        (
            "pathCase: IgnoreCase,",
            "/orders/Admin/1",
            Reason::InsufficientScope,
        ),
        (
            "pathCase: IgnoreCase,",
            "/ORDERS/ADMIN",
            Reason::InsufficientScope,
        ),
        (
            "pathCase: IgnoreCase,",
            "/Orders/HealthZ/x",
            Reason::Anonymous,
        ),
    ];
    for (case, path, want) in cases {
        let policy = mk_policy(
            "orders",
            &format!("{{match: {{hosts: [api.example.com], paths: [/orders], {case}}}, {rules}}}"),
        );
        let s = Snapshot::build(vec![policy], DefaultAction::Deny).0;
        let got = reason(&decide(&s, &req(path).bearer(&user)).await);
        assert_eq!(got, want, "{case} {path}");
    }
    // A policy saying Exact does not speak for another policy that says nothing.
    let root = mk_policy(
        "root",
        "{match: {hosts: [api.example.com], paths: [/], pathCase: Exact}, rules: [{allowAnonymous: true}]}",
    );
    let admin = mk_policy(
        "admin",
        "{match: {hosts: [api.example.com], paths: [/admin]}}",
    );
    let s = Snapshot::build(vec![root, admin.clone()], DefaultAction::Deny).0;
    assert_eq!(
        reason(&decide(&s, &req("/ADMIN/x")).await),
        Reason::RequestMalformed
    );
    // Both IgnoreCase: the folded reading, but not for escaped non-ASCII letters (ſ).
    let ignoring = mk_policy(
        "ignoring",
        "{match: {hosts: [api.example.com], paths: [/orders], pathCase: IgnoreCase}, rules: [{paths: [/orders/settings], requiredClaims: [{name: roles, values: [admin]}]}]}",
    );
    let s = Snapshot::build(vec![ignoring], DefaultAction::Deny).0;
    assert_eq!(
        reason(&decide(&s, &req("/orders/SETTINGS").bearer(&user)).await),
        Reason::InsufficientScope
    );
    assert_eq!(
        reason(&decide(&s, &req("/orders/%C5%BFETTINGS").bearer(&user)).await),
        Reason::RequestMalformed
    );
    // Across policies too: a prefix of one policy matching another's only in another case.
    let upper = mk_policy(
        "upper",
        "{match: {hosts: [api.example.com], paths: [/Reports]}}",
    );
    let lower = mk_policy(
        "lower",
        "{match: {hosts: [api.example.com], paths: [/]}, rules: [{allowAnonymous: true}]}",
    );
    let s = Snapshot::build(vec![upper, lower], DefaultAction::Deny).0;
    assert_eq!(
        reason(&decide(&s, &req("/reports/1")).await),
        Reason::RequestMalformed,
        "/reports/1 is anonymous as written and protected ignoring case"
    );
}

/// HEAD runs the GET handler in most frameworks; a CORS preflight (OPTIONS) carries no token
/// and must not be taken by a longer rule for all methods; a method-override header would run
/// another method than the one judged.
#[tokio::test]
async fn methods_are_judged_as_the_upstream_runs_them() {
    let policy = mk_policy(
        "orders",
        r#"{match: {hosts: [api.example.com], paths: [/orders]},
            rules: [{methods: [OPTIONS], allowAnonymous: true},
                    {paths: [/orders/reports], methods: [GET], requiredClaims: [{name: roles, values: [auditor]}]},
                    {paths: [/orders/admin], requiredClaims: [{name: roles, values: [admin]}]},
                    {paths: [/orders/public], methods: [GET], allowAnonymous: true}]}"#,
    );
    let s = Snapshot::build(vec![policy], DefaultAction::Deny).0;
    let user = RSA.mint(&good_claims()).expect("mint");
    for (method, path, token, want) in [
        ("HEAD", "/orders/reports/1", true, Reason::InsufficientScope),
        ("HEAD", "/orders/public/1", false, Reason::Anonymous),
        ("POST", "/orders/public/1", false, Reason::TokenMissing),
        ("OPTIONS", "/orders/admin/1", false, Reason::Anonymous),
        ("DELETE", "/orders/admin/1", true, Reason::InsufficientScope),
    ] {
        let mut r = req(path).method(method);
        if token {
            r = r.bearer(&user);
        }
        assert_eq!(reason(&decide(&s, &r).await), want, "{method} {path}");
    }
    // A method override: the upstream may run either method, so both must pass. GET is
    // anonymous on /orders/public, DELETE needs a token.
    for override_header in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        let r = req("/orders/public/1")
            .method("GET")
            .header(override_header, "DELETE");
        assert_eq!(
            reason(&decide(&s, &r).await),
            Reason::TokenMissing,
            "{override_header}"
        );
        let r = req("/orders/public/1")
            .method("GET")
            .header(override_header, "DELETE")
            .bearer(&user);
        assert_eq!(
            reason(&decide(&s, &r).await),
            Reason::Valid,
            "{override_header}"
        );
        // Naming the request's own method changes nothing.
        let r = req("/orders/public/1")
            .method("GET")
            .header(override_header, "get");
        assert_eq!(reason(&decide(&s, &r).await), Reason::Anonymous);
    }
    // As the clients of Google APIs and OData send it: POST with PATCH, both judged.
    let r = req("/orders/1")
        .method("POST")
        .header("x-http-method-override", "PATCH")
        .bearer(&user);
    assert_eq!(reason(&decide(&s, &r).await), Reason::Valid);
    // The admin rule holds whichever method runs.
    let r = req("/orders/admin/1")
        .method("POST")
        .header("x-http-method-override", "DELETE")
        .bearer(&user);
    assert_eq!(reason(&decide(&s, &r).await), Reason::InsufficientScope);
    for query in [
        "?_method=DELETE",
        "?x=1&%5Fmethod=delete",
        "?_%6Dethod=DELETE",
        "?%5F%6D%65thod=DEL%45TE",
        "?_method=+DELETE",
        // PHP reads `.method` and ` _method` as `_method`.
        "?.method=DELETE",
        "?%20_method=DELETE",
    ] {
        let r = req(&format!("/orders/public/1{query}")).method("GET");
        assert_eq!(
            reason(&decide(&s, &r).await),
            Reason::TokenMissing,
            "{query}"
        );
    }
    // In another letter case, the same header; twice, refused.
    let r = req("/orders/public/1")
        .method("GET")
        .header("X-HTTP-Method-Override", "DELETE");
    assert_eq!(reason(&decide(&s, &r).await), Reason::TokenMissing);
    let r = req("/orders/public/1")
        .method("GET")
        .header("x-http-method-override", "DELETE")
        .header("X-Http-Method-Override", "DELETE");
    assert_eq!(reason(&decide(&s, &r).await), Reason::RequestMalformed);
    // Overrides that disagree, or name no method: refused.
    for (header, query) in [
        ("PATCH", "?_method=DELETE"),
        ("DE LETE", ""),
        ("", "?_method="),
    ] {
        let mut r = req(&format!("/orders/public/1{query}")).method("GET");
        if !header.is_empty() {
            r = r.header("x-http-method-override", header);
        }
        assert_eq!(
            reason(&decide(&s, &r).await),
            Reason::RequestMalformed,
            "{header:?} {query:?}"
        );
    }
}

/// A policy may say its upstream reads what tollgate otherwise refuses: `%2F` inside an id
/// (GitLab), `//` merged, `;jsessionid` stripped. Only that policy's requests are read so, and
/// what stays ambiguous (dot segments) is refused all the same.
#[tokio::test]
async fn a_policy_can_declare_how_its_upstream_reads_paths() {
    let gitlab = mk_policy(
        "gitlab",
        "{match: {hosts: [api.example.com], paths: [/projects], pathReading: {encodedSlashes: Keep, emptySegments: Merge, parameters: Strip}}, rules: [{paths: [/projects/admin], requiredClaims: [{name: roles, values: [admin]}]}]}",
    );
    let orders = mk_policy(
        "orders",
        "{match: {hosts: [api.example.com], paths: [/orders]}}",
    );
    let s = Snapshot::build(vec![gitlab, orders], DefaultAction::Deny).0;
    let user = RSA.mint(&good_claims()).expect("mint");
    let judged = |d: &Decision| d.path().map(str::to_owned);
    for (path, want, judged_as) in [
        (
            "/projects/group%2Fproject/issues",
            Reason::Valid,
            Some("/projects/group%2Fproject/issues"),
        ),
        ("/projects//1", Reason::Valid, Some("/projects/1")),
        (
            "/projects/1;jsessionid=abc/x",
            Reason::Valid,
            Some("/projects/1/x"),
        ),
        // Merged, the admin rule applies; with the parameter stripped too.
        (
            "/projects//admin",
            Reason::InsufficientScope,
            Some("/projects/admin"),
        ),
        (
            "/projects/admin;x=1",
            Reason::InsufficientScope,
            Some("/projects/admin"),
        ),
        // Still refused: dot segments, an encoded ;, and the other policy's paths.
        ("/projects/x/..;/admin", Reason::RequestMalformed, None),
        ("/projects/a%3Bb", Reason::RequestMalformed, None),
        ("/orders/group%2Fproject", Reason::RequestMalformed, None),
        ("/orders//1", Reason::RequestMalformed, None),
    ] {
        let decision = decide(&s, &req(path).bearer(&user)).await;
        assert_eq!(reason(&decision), want, "{path}");
        if let Some(judged_as) = judged_as {
            assert_eq!(judged(&decision).as_deref(), Some(judged_as), "{path}");
        }
    }
}
