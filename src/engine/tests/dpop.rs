//! DPoP (RFC 9449) through the whole engine: proofs made for each request with a generated
//! key, and every way a proof or its use can be wrong.

use std::sync::LazyLock;

use crate::local_issuer::{SigningKey, dpop_ath};

use super::*;

/// The client's proof key, and another one.
static CLIENT: LazyLock<SigningKey> =
    LazyLock::new(|| SigningKey::ec("client", "ES256").expect("ec key"));
static OTHER: LazyLock<SigningKey> =
    LazyLock::new(|| SigningKey::ec("other", "ES256").expect("ec key"));

const ALLOWED: &str = r#"{match: {hosts: [api.example.com], paths: [/orders]},
    rules: [{paths: [/orders/healthz], allowAnonymous: true}],
    dpop: {mode: allowed, algorithms: [ES256, RS256]}}"#;
const REQUIRED: &str = r#"{match: {hosts: [api.example.com], paths: [/orders]},
    dpop: {mode: required, proofMaxAge: 30s}}"#;
const DISABLED: &str = r#"{match: {hosts: [api.example.com], paths: [/orders]}}"#;

/// A token bound to `key` (`cnf.jkt`).
fn bound_to(key: &SigningKey) -> String {
    RSA.mint(&claims_with(
        json!({"cnf": {"jkt": key.thumbprint().expect("thumbprint")}}),
    ))
    .expect("mint")
}

fn proof_claims(method: &str, htu: &str, token: &str) -> serde_json::Value {
    json!({"jti": format!("{}", uuid_like()), "htm": method, "htu": htu,
        "iat": now_secs(), "ath": dpop_ath(token)})
}

/// A distinct jti per proof.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("jti-{}-{}", now_secs(), N.fetch_add(1, Ordering::Relaxed))
}

fn proof(key: &SigningKey, method: &str, htu: &str, token: &str) -> String {
    key.dpop_proof(&proof_claims(method, htu, token))
        .expect("proof")
}

struct Call {
    method: &'static str,
    host: &'static str,
    path: &'static str,
    scheme: Option<&'static str>,
    headers: Vec<(String, String)>,
}

fn call(path: &'static str) -> Call {
    Call {
        method: "GET",
        host: "api.example.com",
        path,
        scheme: Some("https"),
        headers: Vec::new(),
    }
}

impl Call {
    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
    fn dpop(self, token: &str, proof: &str) -> Self {
        self.header("authorization", &format!("DPoP {token}"))
            .header("dpop", proof)
    }
}

async fn judge(policy: &str, c: &Call) -> Decision {
    let s = snapshot(&[mk_policy("dpop", policy)], DefaultAction::Deny);
    judge_in(&s, c).await
}

async fn judge_in(s: &Snapshot, c: &Call) -> Decision {
    let request = Request {
        host: c.host,
        path: c.path,
        method: c.method,
        headers: Headers::List(&c.headers),
        policy: None,
        route: None,
        source: Peer {
            scheme: c.scheme,
            ..Peer::default()
        },
    };
    check(s, &request, SystemTime::now()).await
}

const URL: &str = "https://api.example.com/orders/1";

#[tokio::test]
async fn a_bound_token_with_its_proof_is_allowed() {
    let token = bound_to(&CLIENT);
    for policy in [ALLOWED, REQUIRED] {
        let d = judge(
            policy,
            &call("/orders/1").dpop(&token, &proof(&CLIENT, "GET", URL, &token)),
        )
        .await;
        assert_eq!(allowed(&d).reason, Reason::Valid);
    }
    // htu compares as URIs: scheme and host in any case, the default port, no query or fragment.
    for htu in [
        "HTTPS://API.example.com/orders/1",
        "https://api.example.com:443/orders/1",
        "https://api.example.com/orders/1?x=1#f",
    ] {
        let d = judge(
            ALLOWED,
            &call("/orders/1?page=2").dpop(&token, &proof(&CLIENT, "GET", htu, &token)),
        )
        .await;
        assert_eq!(allowed(&d).reason, Reason::Valid, "{htu}");
    }
    // A port the client named is part of the URI.
    let mut c = call("/orders/1");
    c.host = "api.example.com:8443";
    let good = c.dpop(
        &token,
        &proof(
            &CLIENT,
            "GET",
            "https://api.example.com:8443/orders/1",
            &token,
        ),
    );
    assert_eq!(allowed(&judge(ALLOWED, &good).await).reason, Reason::Valid);
    // RSA proofs, where the policy lists RS256.
    let rsa = SigningKey::rsa("client-rsa", "RS256", 2048).expect("rsa");
    let token = bound_to(&rsa);
    let d = judge(
        ALLOWED,
        &call("/orders/1").dpop(&token, &proof(&rsa, "GET", URL, &token)),
    )
    .await;
    assert_eq!(allowed(&d).reason, Reason::Valid);
}

#[tokio::test]
async fn a_bearer_token_passes_where_dpop_is_allowed_and_not_where_required() {
    let d = judge(
        ALLOWED,
        &call("/orders/1").header("authorization", &format!("Bearer {}", good())),
    )
    .await;
    assert_eq!(allowed(&d).reason, Reason::Valid);
    let d = judge(
        REQUIRED,
        &call("/orders/1").header("authorization", &format!("Bearer {}", good())),
    )
    .await;
    let deny = denied(&d);
    assert_eq!((deny.status, deny.reason), (401, Reason::DpopRequired));
    let challenge = deny.www_authenticate.as_deref().expect("challenge");
    assert!(
        challenge.starts_with("DPoP realm=\"api.example.com\", error=\"invalid_token\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("algs=\"ES256 ES384 EdDSA PS256 PS384 PS512 RS256 RS384 RS512\""),
        "{challenge}"
    );
    assert!(!challenge.contains("Bearer"), "{challenge}");
    // An unbound token sent with the DPoP scheme is refused, even with a proof.
    let token = good();
    let d = judge(
        ALLOWED,
        &call("/orders/1").dpop(&token, &proof(&CLIENT, "GET", URL, &token)),
    )
    .await;
    assert_eq!(denied(&d).reason, Reason::DpopProofInvalid);
}

#[tokio::test]
async fn a_bound_token_as_bearer_is_refused_in_every_mode() {
    let token = bound_to(&CLIENT);
    for policy in [DISABLED, ALLOWED, REQUIRED] {
        // With a proof alongside, too: the Bearer scheme says the client does not use it.
        let c = call("/orders/1")
            .header("authorization", &format!("Bearer {token}"))
            .header("dpop", &proof(&CLIENT, "GET", URL, &token));
        let d = judge(policy, &c).await;
        assert_eq!(
            denied(&d).reason,
            Reason::DpopBoundTokenAsBearer,
            "{policy}"
        );
    }
    // The allowed policy's challenge offers both schemes, the error on DPoP's.
    let c = call("/orders/1").header("authorization", &format!("Bearer {token}"));
    let d = judge(ALLOWED, &c).await;
    assert_eq!(
        denied(&d).www_authenticate.as_deref(),
        Some(
            "Bearer realm=\"api.example.com\", DPoP realm=\"api.example.com\", error=\"invalid_token\", error_description=\"dpop_bound_token_as_bearer: the access token is bound to a key (DPoP) and cannot be used as a bearer token\", algs=\"ES256 RS256\""
        )
    );
}

#[tokio::test]
async fn hostile_proofs_are_refused() {
    let token = bound_to(&CLIENT);
    let ath = dpop_ath(&token);
    let now = now_secs();
    let claims = |changes: serde_json::Value| {
        let mut c = proof_claims("GET", URL, &token);
        for (k, v) in changes.as_object().expect("object") {
            if v.is_null() {
                c.as_object_mut().expect("object").remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let signed = |changes| CLIENT.dpop_proof(&claims(changes)).expect("proof");
    let mut public = CLIENT.jwk().expect("jwk");
    public.as_object_mut().expect("object").remove("kid");
    let with_header = |header: serde_json::Value| {
        CLIENT
            .mint_with_header(&header, &claims(json!({})))
            .expect("mint")
    };
    let hmac = SigningKey::hmac("h", "HS256", &[7u8; 32]);
    let unsigned = {
        let input = format!(
            "{}.{}",
            B64.encode(
                serde_json::to_vec(&json!({"typ": "dpop+jwt", "alg": "none", "jwk": public}))
                    .expect("json")
            ),
            B64.encode(serde_json::to_vec(&claims(json!({}))).expect("json"))
        );
        format!("{input}.")
    };
    let mut private = public.clone();
    private["d"] = json!("ZmFrZS1wcml2YXRlLWtleS1tYXRlcmlhbC0xMjM0NTY3OA");
    let cases: Vec<(&str, String, Reason)> = vec![
        (
            "wrong htm",
            signed(json!({"htm": "POST"})),
            Reason::DpopProofInvalid,
        ),
        (
            "htm in lower case",
            signed(json!({"htm": "get"})),
            Reason::DpopProofInvalid,
        ),
        (
            "wrong htu path",
            signed(json!({"htu": "https://api.example.com/orders/2"})),
            Reason::DpopProofInvalid,
        ),
        (
            "wrong htu host",
            signed(json!({"htu": "https://evil.example.com/orders/1"})),
            Reason::DpopProofInvalid,
        ),
        (
            "wrong htu scheme",
            signed(json!({"htu": "http://api.example.com/orders/1"})),
            Reason::DpopProofInvalid,
        ),
        (
            "wrong htu port",
            signed(json!({"htu": "https://api.example.com:8443/orders/1"})),
            Reason::DpopProofInvalid,
        ),
        (
            "htu with userinfo",
            signed(json!({"htu": "https://a@api.example.com/orders/1"})),
            Reason::DpopProofInvalid,
        ),
        (
            "wrong ath",
            signed(json!({"ath": dpop_ath("another token")})),
            Reason::DpopProofInvalid,
        ),
        (
            "no ath",
            signed(json!({"ath": null})),
            Reason::DpopProofInvalid,
        ),
        (
            "no jti",
            signed(json!({"jti": null})),
            Reason::DpopProofInvalid,
        ),
        (
            "stale iat",
            signed(json!({"iat": now - 120})),
            Reason::DpopProofInvalid,
        ),
        (
            "future iat",
            signed(json!({"iat": now + 600})),
            Reason::DpopProofInvalid,
        ),
        (
            "iat as a string",
            signed(json!({"iat": now.to_string()})),
            Reason::DpopProofInvalid,
        ),
        (
            "another key",
            OTHER.dpop_proof(&claims(json!({}))).expect("proof"),
            Reason::DpopProofInvalid,
        ),
        (
            "typ JWT",
            with_header(json!({"typ": "JWT", "alg": "ES256", "jwk": public})),
            Reason::DpopProofInvalid,
        ),
        (
            "no jwk",
            with_header(json!({"typ": "dpop+jwt", "alg": "ES256"})),
            Reason::DpopProofInvalid,
        ),
        (
            "private jwk",
            with_header(json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": private})),
            Reason::DpopProofInvalid,
        ),
        (
            "another key's jwk",
            with_header(json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": OTHER.jwk()})),
            Reason::DpopProofInvalid,
        ),
        (
            "crit",
            with_header(
                json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": public, "crit": ["x"], "x": 1}),
            ),
            Reason::DpopProofInvalid,
        ),
        ("alg none", unsigned, Reason::DpopProofInvalid),
        (
            "HS256",
            hmac.mint_with_header(
                &json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct", "k": "Bwc"}}),
                &claims(json!({})),
            )
            .expect("mint"),
            Reason::DpopProofInvalid,
        ),
        (
            "ES384 not on the list",
            with_header(json!({"typ": "dpop+jwt", "alg": "ES384", "jwk": public})),
            Reason::DpopProofInvalid,
        ),
        ("not a JWS", "abc".into(), Reason::DpopProofInvalid),
        (
            "a token, not a proof",
            token.clone(),
            Reason::DpopProofInvalid,
        ),
    ];
    for (what, proof, reason) in cases {
        let d = judge(ALLOWED, &call("/orders/1").dpop(&token, &proof)).await;
        let deny = denied(&d);
        assert_eq!(
            (deny.status, deny.reason),
            (401, reason),
            "{what}: {}",
            deny.description
        );
        if reason == Reason::DpopProofInvalid {
            let challenge = deny.www_authenticate.as_deref().expect("challenge");
            assert!(
                challenge.contains("DPoP realm=\"api.example.com\", error=\"invalid_dpop_proof\""),
                "{what}: {challenge}"
            );
        }
    }
    // No proof, an empty one, two of them (as two lines or joined by Envoy with a comma).
    let one = proof(&CLIENT, "GET", URL, &token);
    let d = judge(
        ALLOWED,
        &call("/orders/1").header("authorization", &format!("DPoP {token}")),
    )
    .await;
    assert_eq!(denied(&d).reason, Reason::DpopProofMissing);
    let two = proof(&CLIENT, "GET", URL, &token);
    let d = judge(
        ALLOWED,
        &call("/orders/1").dpop(&token, &one).header("DPoP", &two),
    )
    .await;
    assert_eq!(denied(&d).reason, Reason::DpopProofInvalid);
    let d = judge(
        ALLOWED,
        &call("/orders/1").dpop(&token, &format!("{one},{two}")),
    )
    .await;
    assert_eq!(denied(&d).reason, Reason::DpopProofInvalid);
    let _ = ath;
}

#[tokio::test]
async fn a_proof_is_used_once() {
    let s = snapshot(&[mk_policy("dpop", ALLOWED)], DefaultAction::Deny);
    let token = bound_to(&CLIENT);
    let one = proof(&CLIENT, "GET", URL, &token);
    let c = call("/orders/1").dpop(&token, &one);
    assert!(judge_in(&s, &c).await.is_allow());
    let d = judge_in(&s, &c).await;
    assert_eq!(denied(&d).reason, Reason::DpopReplayed);
    // A new proof for the same token passes.
    let c = call("/orders/1").dpop(&token, &proof(&CLIENT, "GET", URL, &token));
    assert!(judge_in(&s, &c).await.is_allow());
}

#[tokio::test]
async fn the_verified_token_cache_never_skips_the_proof() {
    let mut s = snapshot(&[mk_policy("dpop", ALLOWED)], DefaultAction::Deny);
    s.token_cache = crate::verified::TokenCache::new(Default::default());
    let token = bound_to(&CLIENT);
    let c = call("/orders/1").dpop(&token, &proof(&CLIENT, "GET", URL, &token));
    assert!(judge_in(&s, &c).await.is_allow());
    // The token is cached now; each of these must still fail on its proof.
    let wrong = call("/orders/1").dpop(&token, &proof(&CLIENT, "POST", URL, &token));
    assert_eq!(
        denied(&judge_in(&s, &wrong).await).reason,
        Reason::DpopProofInvalid
    );
    let none = call("/orders/1").header("authorization", &format!("DPoP {token}"));
    assert_eq!(
        denied(&judge_in(&s, &none).await).reason,
        Reason::DpopProofMissing
    );
    let bearer = call("/orders/1").header("authorization", &format!("Bearer {token}"));
    assert_eq!(
        denied(&judge_in(&s, &bearer).await).reason,
        Reason::DpopBoundTokenAsBearer
    );
    // A policy without dpop: the bound token is refused from the cached claims too, also
    // when a condition's claims are kept parsed in the cache entry (cnf is not among them).
    let with_cel = r#"{match: {hosts: [api.example.com], paths: [/orders]},
        when: [{expression: "claims.sub != ''"}]}"#;
    for spec in [DISABLED, with_cel] {
        let mut s = snapshot(&[mk_policy("dpop-off", spec)], DefaultAction::Deny);
        s.token_cache = crate::verified::TokenCache::new(Default::default());
        let plain = call("/orders/1").header("authorization", &format!("Bearer {}", good()));
        for _ in 0..2 {
            assert!(judge_in(&s, &plain).await.is_allow());
            assert_eq!(
                denied(&judge_in(&s, &bearer).await).reason,
                Reason::DpopBoundTokenAsBearer
            );
        }
        let hits = s.token_cache.as_ref().map(|c| c.stats().hits);
        assert!(hits.is_some_and(|h| h >= 2), "{spec}: {hits:?}");
    }
}

#[tokio::test]
async fn an_unknown_scheme_fails_closed() {
    let token = bound_to(&CLIENT);
    let mut c = call("/orders/1").dpop(&token, &proof(&CLIENT, "GET", URL, &token));
    c.scheme = None;
    let d = judge(ALLOWED, &c).await;
    let deny = denied(&d);
    assert_eq!(deny.reason, Reason::DpopProofInvalid);
    assert!(
        deny.description.contains("scheme is not known"),
        "{}",
        deny.description
    );
}

#[tokio::test]
async fn a_proof_without_a_token_is_token_missing() {
    let token = bound_to(&CLIENT);
    let d = judge(
        REQUIRED,
        &call("/orders/1").header("dpop", &proof(&CLIENT, "GET", URL, &token)),
    )
    .await;
    let deny = denied(&d);
    assert_eq!(deny.reason, Reason::TokenMissing);
    assert!(
        deny.www_authenticate
            .as_deref()
            .is_some_and(|c| c.starts_with("DPoP "))
    );
    // DPoP and Bearer at once: two tokens.
    let c = call("/orders/1")
        .header("authorization", &format!("DPoP {token}"))
        .header("authorization", &format!("Bearer {}", good()))
        .header("dpop", &proof(&CLIENT, "GET", URL, &token));
    assert_eq!(
        denied(&judge(ALLOWED, &c).await).reason,
        Reason::TokenMalformed
    );
    // Anonymous rules read no token and no proof.
    assert!(judge(ALLOWED, &call("/orders/healthz")).await.is_allow());
}

#[test]
fn symmetric_proof_algorithms_do_not_compile() {
    let e = try_compile(
        "dpop",
        &spec_with("{dpop: {mode: allowed, algorithms: [HS256]}}"),
    )
    .expect_err("HS256");
    assert!(e.to_string().contains("spec.dpop.algorithms"), "{e}");
    let e = try_compile(
        "dpop",
        &spec_with("{dpop: {mode: allowed, proofMaxAge: 10m}}"),
    )
    .expect_err("10m");
    assert!(e.to_string().contains("spec.dpop.proofMaxAge"), "{e}");
}

#[tokio::test]
async fn a_method_override_is_refused_with_a_proof() {
    // Judged as GET and as DELETE: the proof names GET only.
    let token = bound_to(&CLIENT);
    let c = call("/orders/1")
        .dpop(&token, &proof(&CLIENT, "GET", URL, &token))
        .header("x-http-method-override", "DELETE");
    let d = judge(ALLOWED, &c).await;
    let deny = denied(&d);
    assert_eq!(deny.reason, Reason::DpopProofInvalid);
    assert!(
        deny.description
            .contains("for method \"GET\", the request is DELETE"),
        "{}",
        deny.description
    );
}

/// A policy with nonces, its secret in a file.
fn with_nonces(dir: &std::path::Path, lifetime: &str) -> Arc<Policy> {
    let path = dir.join("nonce-secret");
    std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").expect("write secret");
    mk_policy(
        "dpop",
        &format!(
            r#"{{match: {{hosts: [api.example.com], paths: [/orders]}},
            dpop: {{mode: allowed, nonce: {{secret: {{file: "{}"}}, lifetime: {lifetime}}}}}}}"#,
            path.display()
        ),
    )
}

fn proof_with_nonce(key: &SigningKey, token: &str, nonce: Option<&str>) -> String {
    let mut claims = proof_claims("GET", URL, token);
    if let Some(nonce) = nonce {
        claims["nonce"] = json!(nonce);
    }
    key.dpop_proof(&claims).expect("proof")
}

fn header(deny: &crate::decision::Deny, name: &str) -> Option<String> {
    deny.headers()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

#[tokio::test]
async fn a_policy_with_nonces_hands_them_out_and_requires_them() {
    let dir = tempfile::tempdir().expect("dir");
    let s = snapshot(&[with_nonces(dir.path(), "60s")], DefaultAction::Deny);
    let token = bound_to(&CLIENT);
    // The first proof has no nonce: 401 use_dpop_nonce, with the nonce to use.
    let first = call("/orders/1").dpop(&token, &proof_with_nonce(&CLIENT, &token, None));
    let d = judge_in(&s, &first).await;
    let deny = denied(&d);
    assert_eq!((deny.status, deny.reason), (401, Reason::DpopNonceRequired));
    let challenge = header(deny, "www-authenticate").expect("challenge");
    assert!(
        challenge.contains("DPoP realm=\"api.example.com\", error=\"use_dpop_nonce\""),
        "{challenge}"
    );
    let nonce = header(deny, "dpop-nonce").expect("DPoP-Nonce");
    // With it, the request passes; the nonce is current, so no new one is handed out.
    let retry = call("/orders/1").dpop(&token, &proof_with_nonce(&CLIENT, &token, Some(&nonce)));
    let a = judge_in(&s, &retry).await;
    assert!(allowed(&a).response_headers.is_empty(), "{a:?}");
    // Every 401 of the policy carries the nonce, a missing token's included, so a client
    // learns it from its first answer.
    let d = judge_in(&s, &call("/orders/1")).await;
    assert_eq!(denied(&d).reason, Reason::TokenMissing);
    assert_eq!(header(denied(&d), "dpop-nonce"), Some(nonce.clone()));
    // A bearer token passes under mode: allowed without any nonce (nonces are about proofs).
    let bearer = call("/orders/1").header("authorization", &format!("Bearer {}", good()));
    assert!(
        allowed(&judge_in(&s, &bearer).await)
            .response_headers
            .is_empty()
    );
}

#[tokio::test]
async fn stale_forged_and_foreign_nonces_are_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let s = snapshot(&[with_nonces(dir.path(), "60s")], DefaultAction::Deny);
    let token = bound_to(&CLIENT);
    let same = crate::dpop::Nonces::new(b"0123456789abcdef0123456789abcdef", 60).expect("nonces");
    let other = crate::dpop::Nonces::new(b"a different secret, also 32 byte", 60).expect("other");
    let now = u64::try_from(now_secs()).expect("after 1970");
    let cases = [
        ("expired", json!(same.issue(now - 61))),
        ("another secret's", json!(other.issue(now))),
        ("from the future", json!(same.issue(now + 600))),
        ("not a string", json!(12)),
        ("empty", json!("")),
    ];
    for (what, nonce) in cases {
        let mut claims = proof_claims("GET", URL, &token);
        claims["nonce"] = nonce;
        let c = call("/orders/1").dpop(&token, &CLIENT.dpop_proof(&claims).expect("proof"));
        let d = judge_in(&s, &c).await;
        assert_eq!(denied(&d).reason, Reason::DpopNonceRequired, "{what}");
        assert!(header(denied(&d), "dpop-nonce").is_some(), "{what}");
    }
    // A proof wrong in another way is invalid, whatever its nonce: the nonce is checked last.
    let mut claims = proof_claims("POST", URL, &token);
    claims["nonce"] = json!(same.issue(now));
    let c = call("/orders/1").dpop(&token, &CLIENT.dpop_proof(&claims).expect("proof"));
    let d = judge_in(&s, &c).await;
    assert_eq!(denied(&d).reason, Reason::DpopProofInvalid);
    let challenge = header(denied(&d), "www-authenticate").expect("challenge");
    assert!(
        challenge.contains("error=\"invalid_dpop_proof\""),
        "{challenge}"
    );
    // A nonce is no ticket: the proof it is in is used once.
    let one = proof_with_nonce(&CLIENT, &token, Some(&same.issue(now)));
    let c = call("/orders/1").dpop(&token, &one);
    assert!(judge_in(&s, &c).await.is_allow());
    assert_eq!(denied(&judge_in(&s, &c).await).reason, Reason::DpopReplayed);
}

#[tokio::test]
async fn an_older_nonce_still_good_gets_the_current_one() {
    let dir = tempfile::tempdir().expect("dir");
    let s = snapshot(&[with_nonces(dir.path(), "60s")], DefaultAction::Deny);
    let token = bound_to(&CLIENT);
    let nonces = crate::dpop::Nonces::new(b"0123456789abcdef0123456789abcdef", 60).expect("nonces");
    let now = u64::try_from(now_secs()).expect("after 1970");
    // Issued one half-lifetime before the current one: accepted, and renewed.
    let older = nonces.issue(nonces.issued_at(now) - 30);
    let c = call("/orders/1").dpop(&token, &proof_with_nonce(&CLIENT, &token, Some(&older)));
    let d = judge_in(&s, &c).await;
    let renewed = &allowed(&d).response_headers;
    assert_eq!(renewed.len(), 1, "{renewed:?}");
    assert_eq!(renewed[0].0, "dpop-nonce");
    assert_ne!(renewed[0].1, older);
    assert!(nonces.check(&renewed[0].1, now, 0).is_ok());
}

#[test]
fn nonce_settings_are_checked_when_the_policy_compiles() {
    let dir = tempfile::tempdir().expect("dir");
    let short = dir.path().join("short");
    std::fs::write(&short, "too short").expect("write");
    let spec = |secret: &std::path::Path, lifetime: &str| {
        spec_with(&format!(
            r#"{{dpop: {{mode: allowed, nonce: {{secret: {{file: "{}"}}, lifetime: {lifetime}}}}}}}"#,
            secret.display()
        ))
    };
    let e = try_compile("dpop", &spec(&short, "1m")).expect_err("short secret");
    assert!(e.to_string().contains("spec.dpop.nonce.secret"), "{e}");
    assert!(e.to_string().contains("at least 32"), "{e}");
    let e = try_compile("dpop", &spec(&dir.path().join("absent"), "1m")).expect_err("absent");
    assert!(e.to_string().contains("spec.dpop.nonce.secret"), "{e}");
    let long = dir.path().join("long");
    std::fs::write(&long, "0123456789abcdef0123456789abcdef").expect("write");
    for lifetime in ["5s", "2h", "soon"] {
        let e = try_compile("dpop", &spec(&long, lifetime)).expect_err(lifetime);
        assert!(
            e.to_string().contains("spec.dpop.nonce.lifetime"),
            "{lifetime}: {e}"
        );
    }
    assert!(try_compile("dpop", &spec(&long, "10s")).is_ok());
}
