//! Golden-output tests: each case's text explanation is compared with
//! `tests/golden/explain/<case>.txt`. Token fingerprints change with every generated key, so
//! they are replaced by `<fingerprint>` first. `TOLLGATE_BLESS=1 cargo test explain` rewrites
//! the files after a deliberate change (review the diff).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use super::*;
use crate::fixtures::*;
use crate::jwe::{self, ContentEncryption, KeyManagement};
use base64::Engine as _;

use crate::jose::B64;
use crate::jwks::KeySources;
use crate::local_issuer::{SigningKey, jwks};

/// 2026-01-01T00:00:00Z: every token and every output is relative to it.
const AT: u64 = 1_767_225_600;
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

fn at() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(AT)
}

fn claims(changes: Value) -> Value {
    let at = AT as i64;
    let mut claims = json!({"iss": ISSUER, "sub": "user-1", "aud": AUDIENCE, "iat": at - 60,
        "exp": at + 3600, "scp": "orders.read", "roles": ["user"]});
    for (k, v) in changes.as_object().expect("object") {
        if v.is_null() {
            claims.as_object_mut().expect("object").remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

fn token(changes: Value) -> String {
    RSA.mint(&claims(changes)).expect("mint")
}

const ORDERS: &str = r#"{match: {hosts: [api.example.com], paths: [/orders]},
    requiredClaims: [{name: scp, separator: " ", values: [orders.read, orders.write]}],
    rules: [{paths: [/orders/admin], methods: [DELETE], requiredClaims: [{name: roles, values: [admin]}]}]}"#;

fn orders() -> Snapshot {
    single(mk_policy("orders", ORDERS))
}

fn azure() -> Snapshot {
    let spec = spec(&format!(
        r#"{{match: {{hosts: [api.example.com]}},
            issuers: [{{issuer: "https://login.microsoftonline.com/{TENANT}/v2.0",
                        audiences: ["api://orders"], jwks: {}}}]}}"#,
        jwks(&[&RSA])
    ));
    single(Arc::new(try_compile("azure", &spec).expect("compiles")))
}

/// An issuer template with two tenants, `maxTokenLifetime` and a rule requiring scopes.
fn tenants() -> Snapshot {
    let spec = spec(&format!(
        r#"{{match: {{hosts: [api.example.com], paths: [/orders]}},
            issuers: [{{issuer: "https://kc.example.com/realms/{{tenant}}", tenants: [acme, globex],
                        audiences: ["api://orders"], jwks: {}, maxTokenLifetime: 2h}}],
            rules: [{{paths: [/orders/admin], requiredClaims: [{{name: scp, match: all, separator: " ", values: [orders.read, orders.admin]}}]}}]}}"#,
        jwks(&[&RSA])
    ));
    single(Arc::new(try_compile("tenants", &spec).expect("compiles")))
}

/// A policy whose issuer publishes its keys by discovery (never fetched offline).
fn remote() -> Snapshot {
    let spec =
        spec(r#"{issuers: [{issuer: "https://idp.example.com/", audiences: ["api://orders"]}]}"#);
    single(Arc::new(try_compile("remote", &spec).expect("compiles")))
}

struct Case {
    name: &'static str,
    snapshot: Snapshot,
    request: ExplainRequest,
    offline: bool,
    expect: (&'static str, &'static str),
}

fn case(name: &'static str, snapshot: Snapshot, token: Option<String>) -> Case {
    Case {
        name,
        snapshot,
        request: ExplainRequest {
            token,
            at: Some(at()),
            ..ExplainRequest::default()
        },
        offline: true,
        expect: ("deny", ""),
    }
}

impl Case {
    fn expect(mut self, decision: &'static str, reason: &'static str) -> Self {
        self.expect = (decision, reason);
        self
    }
    fn path(mut self, method: &str, path: &str) -> Self {
        self.request.host = Some("api.example.com".into());
        self.request.method = Some(method.into());
        self.request.path = Some(path.into());
        self
    }
}

fn key_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write");
    file
}

fn cases(enc_key: &tempfile::NamedTempFile) -> Vec<Case> {
    let hs256 = SigningKey::hmac("rsa-1", "HS256", &[7u8; 32]);
    let none = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(claims(json!({})).to_string())
    );
    let other = jwe::parse_keys(
        json!({"kty": "oct", "kid": "enc-2", "k": B64.encode([2u8; 32])})
            .to_string()
            .as_bytes(),
    )
    .expect("key")[0]
        .public()
        .expect("public");
    let mine = jwe::parse_keys(&std::fs::read(enc_key.path()).expect("read")).expect("key")[0]
        .public()
        .expect("public");
    let encrypt = |to: &jwe::EncryptionKey| {
        jwe::encrypt(
            token(json!({})).as_bytes(),
            to,
            KeyManagement::A256Kw,
            ContentEncryption::A256Gcm,
            Some("JWT"),
        )
        .expect("encrypts")
    };
    let decrypting = mk_policy(
        "decrypting",
        &format!(
            "{{decryption: {{keys: [{{file: {:?}, kid: enc-1}}]}}}}",
            enc_key.path()
        ),
    );
    let graph_header =
        json!({"alg": "RS256", "kid": "rsa-1", "typ": "JWT", "nonce": "ZM2dNQvGUXzVm5bM7pA1HXw7"});
    let v2 = |changes: Value| {
        let mut c = claims(json!({
            "iss": format!("https://login.microsoftonline.com/{TENANT}/v2.0"),
            "aud": "api://orders", "tid": TENANT, "ver": "2.0", "azp": "2d4d11a2-f814-46a7-890a-274a72a7309e"
        }));
        for (k, v) in changes.as_object().expect("object") {
            c[k] = v.clone();
        }
        c
    };
    vec![
        case("valid", orders(), Some(token(json!({})))).expect("allow", "valid"),
        case("missing", orders(), None).expect("deny", "token_missing"),
        case("malformed", orders(), Some("not-a.jwt".into())).expect("deny", "token_malformed"),
        case("expired", orders(), Some(token(json!({"exp": AT - 7200}))))
            .expect("deny", "token_expired"),
        case(
            "not-yet-valid",
            orders(),
            Some(token(json!({"nbf": AT + 3600}))),
        )
        .expect("deny", "token_not_yet_valid"),
        case(
            "audience",
            orders(),
            Some(token(json!({"aud": "api://payments"}))),
        )
        .expect("deny", "audience_mismatch"),
        case(
            "issuer-slash",
            orders(),
            Some(token(json!({"iss": "https://idp.example.com"}))),
        )
        .expect("deny", "issuer_not_allowed"),
        case("alg-none", orders(), Some(none)).expect("deny", "algorithm_not_allowed"),
        case(
            "hs256-confusion",
            orders(),
            Some(hs256.mint(&claims(json!({}))).expect("mint")),
        )
        .expect("deny", "algorithm_not_allowed"),
        case(
            "unknown-kid",
            orders(),
            Some(
                SigningKey::rsa("rotated-7", "RS256", 2048)
                    .expect("key")
                    .mint(&claims(json!({})))
                    .expect("mint"),
            ),
        )
        .expect("deny", "key_not_found"),
        case(
            "bad-signature",
            orders(),
            Some(ROGUE.mint(&claims(json!({}))).expect("mint")),
        )
        .expect("deny", "signature_invalid"),
        case("no-exp", orders(), Some(token(json!({"exp": null}))))
            .expect("deny", "expiration_missing"),
        case(
            "scope",
            orders(),
            Some(token(json!({"scp": "profile email"}))),
        )
        .expect("deny", "claim_mismatch"),
        case("rule", orders(), Some(token(json!({}))))
            .path("DELETE", "/orders/admin/42")
            .expect("deny", "insufficient_scope"),
        case("no-policy", orders(), Some(token(json!({}))))
            .path("GET", "/payments")
            .expect("deny", "no_policy"),
        case("encrypted", orders(), Some(encrypt(&mine))).expect("deny", "token_encrypted"),
        case(
            "encrypted-valid",
            single(decrypting.clone()),
            Some(encrypt(&mine)),
        )
        .expect("allow", "valid"),
        case(
            "encrypted-other-key",
            single(decrypting),
            Some(encrypt(&other)),
        )
        .expect("deny", "decryption_key_not_found"),
        case(
            "azure-graph",
            azure(),
            Some(
                RSA.mint_with_header(
                    &graph_header,
                    &v2(json!({"aud": "00000003-0000-0000-c000-000000000000", "scp": "User.Read"})),
                )
                .expect("mint"),
            ),
        )
        .expect("deny", "azure_graph_token"),
        case(
            "azure-v1-token",
            azure(),
            Some(
                RSA.mint(&v2(
                    json!({"iss": format!("https://sts.windows.net/{TENANT}/"),
                    "ver": "1.0", "appid": "2d4d11a2-f814-46a7-890a-274a72a7309e"}),
                ))
                .expect("mint"),
            ),
        )
        .expect("deny", "azure_token_version"),
        case(
            "tenant",
            tenants(),
            Some(token(json!({"iss": "https://kc.example.com/realms/globex"}))),
        )
        .expect("allow", "valid"),
        case(
            "tenant-not-allowed",
            tenants(),
            Some(token(json!({"iss": "https://kc.example.com/realms/initech"}))),
        )
        .expect("deny", "issuer_not_allowed"),
        case(
            "lifetime",
            tenants(),
            Some(token(
                json!({"iss": "https://kc.example.com/realms/acme", "exp": 9_223_372_036_854_775_808u64}),
            )),
        )
        .expect("deny", "token_lifetime_exceeded"),
        case(
            "scope-challenge",
            tenants(),
            Some(token(json!({"iss": "https://kc.example.com/realms/acme"}))),
        )
        .path("GET", "/orders/admin")
        .expect("deny", "insufficient_scope"),
        case(
            "offline-unverified",
            remote(),
            Some(token(json!({"aud": "api://payments"}))),
        )
        .expect("deny", "issuer_unavailable"),
        case(
            "dry-run",
            single(mk_policy(
                "orders",
                &ORDERS.replacen('{', "{mode: dryRun, ", 1),
            )),
            Some(token(json!({"exp": AT - 600}))),
        )
        .expect("allow", "dry_run"),
    ]
}

fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("fingerprint ") {
        let (head, tail) = rest.split_at(i + "fingerprint ".len());
        out.push_str(head);
        let hex = tail.bytes().take_while(|b| b.is_ascii_hexdigit()).count();
        out.push_str("<fingerprint>");
        rest = &tail[hex..];
    }
    out.push_str(rest);
    out
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/explain")
}

#[tokio::test]
async fn explanations_match_the_golden_files() {
    let enc_key =
        key_file(&json!({"kty": "oct", "kid": "enc-1", "k": B64.encode([1u8; 32])}).to_string());
    let bless = std::env::var_os("TOLLGATE_BLESS").is_some();
    let mut mismatched = Vec::new();
    let all = cases(&enc_key);
    assert!(all.iter().filter(|c| c.expect.0 == "deny").count() >= 12);
    for case in all {
        let explanation = explain(&case.snapshot, &case.request, case.offline)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(
            (explanation.decision, explanation.reason),
            case.expect,
            "{}",
            case.name
        );
        let text = normalize(&render_text(&explanation));
        let path = golden_dir().join(format!("{}.txt", case.name));
        if bless {
            std::fs::create_dir_all(golden_dir()).expect("mkdir");
            std::fs::write(&path, &text).expect("write golden");
            continue;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (TOLLGATE_BLESS=1 writes it)", path.display()));
        if expected != text {
            mismatched.push(format!(
                "--- {}\n{expected}\n+++ got\n{text}",
                path.display()
            ));
        }
    }
    assert!(mismatched.is_empty(), "{}", mismatched.join("\n"));
}

#[test]
fn the_readme_shows_a_real_explanation() {
    let golden = std::fs::read_to_string(golden_dir().join("audience.txt")).expect("golden");
    let readme = include_str!("../../README.md");
    assert!(
        readme.contains(&golden.replace("<fingerprint>", "3f9a0c51d2e7")),
        "README.md's explain example differs from tests/golden/explain/audience.txt"
    );
}

#[tokio::test]
async fn json_output_carries_the_decision_the_token_and_every_step() {
    let request = ExplainRequest {
        token: Some(token(json!({"aud": "api://payments"}))),
        at: Some(at()),
        ..ExplainRequest::default()
    };
    let explanation = explain(&orders(), &request, true).await.expect("explains");
    let json: Value =
        serde_json::from_str(&serde_json::to_string(&explanation).expect("json")).expect("parses");
    assert_eq!(json["decision"], "deny");
    assert_eq!(json["status"], 401);
    assert_eq!(json["reason"], "audience_mismatch");
    assert_eq!(json["policy"], "test/orders");
    assert_eq!(json["request"]["host"], "api.example.com");
    assert_eq!(json["header"]["kid"], "rsa-1");
    assert_eq!(json["claims"]["aud"], "api://payments");
    let steps = json["steps"].as_array().expect("steps");
    let checks: Vec<(&str, &str)> = steps
        .iter()
        .map(|s| {
            (
                s["check"].as_str().expect("check"),
                s["outcome"].as_str().expect("outcome"),
            )
        })
        .collect();
    assert_eq!(
        checks,
        [
            ("policy", "info"),
            ("token", "info"),
            ("token", "pass"),
            ("issuer", "pass"),
            ("algorithm", "pass"),
            ("keys", "pass"),
            ("signature", "pass"),
            ("exp", "pass"),
            ("nbf", "pass"),
            ("iat", "pass"),
            ("aud", "fail"),
        ]
    );
    let aud = &steps[10];
    assert_eq!(aud["reason"], "audience_mismatch");
    assert_eq!(
        aud["fix"],
        "the token's aud is api://payments; this policy accepts api://orders — request the token with scope api://orders/.default"
    );
    // The token itself is nowhere in the output.
    let text = json.to_string();
    assert!(!text.contains(request.token.as_deref().expect("token")));
    assert_eq!(failures(&explanation).count(), 1);
}

#[tokio::test]
async fn several_policies_need_a_route_and_select_like_one() {
    let snapshot = Snapshot::build(
        vec![
            mk_policy("orders", ORDERS),
            mk_policy(
                "payments",
                "{match: {hosts: [api.example.com], paths: [/payments]}}",
            ),
        ],
        DefaultAction::Deny,
    )
    .0;
    let bare = ExplainRequest {
        token: Some(token(json!({}))),
        at: Some(at()),
        ..ExplainRequest::default()
    };
    let err = explain(&snapshot, &bare, true)
        .await
        .expect_err("ambiguous");
    assert!(
        err.to_string().contains("test/orders, test/payments"),
        "{err}"
    );
    let routed = ExplainRequest {
        host: Some("api.example.com".into()),
        path: Some("/payments/1".into()),
        ..bare
    };
    let explanation = explain(&snapshot, &routed, true).await.expect("explains");
    assert_eq!(explanation.policy.as_deref(), Some("test/payments"));
    assert!(explanation.allowed());
}

#[test]
fn policy_sources_are_files_or_cluster_names() {
    assert_eq!(
        PolicySource::parse("shop/orders"),
        PolicySource::Cluster {
            namespace: "shop".into(),
            name: "orders".into()
        }
    );
    assert_eq!(
        PolicySource::parse("examples/policies"),
        PolicySource::File("examples/policies".into())
    );
    assert_eq!(
        PolicySource::parse("./orders.yaml"),
        PolicySource::File("./orders.yaml".into())
    );
    let sources = KeySources::offline().expect("client");
    let err = load_files("/nonexistent/policy.yaml".into(), sources).expect_err("missing");
    assert!(err.to_string().contains("does not exist"));
}

#[tokio::test]
async fn conditions_show_their_expression_inputs_and_result() {
    let snapshot = single(mk_policy(
        "tenants",
        r#"{match: {hosts: [api.example.com]},
            when: [{expression: "request.headers['x-tenant'] in claims.tenants", message: "wrong tenant"}],
            rules: [{paths: [/admin], when: [{expression: "'admin' in claims.roles"}]}]}"#,
    ));
    let token = RSA
        .mint(&claims(json!({"tenants": ["acme", "globex"]})))
        .expect("mint");
    let ask = |path: &str, tenant: &str| ExplainRequest {
        token: Some(token.clone()),
        host: Some("api.example.com".into()),
        path: Some(path.into()),
        method: Some("GET".into()),
        headers: vec![("x-tenant".into(), tenant.into())],
        at: Some(at()),
        client_certificate: None,
        scheme: None,
    };
    let pass = explain(&snapshot, &ask("/orders", "acme"), true)
        .await
        .expect("explains");
    let text = render_text(&pass);
    assert!(
        text.contains("spec.when[0] `request.headers['x-tenant'] in claims.tenants` is true (request.headers[\"x-tenant\"] = \"acme\", claims.tenants = [\"acme\", \"globex\"])"),
        "{text}"
    );
    let fail = explain(&snapshot, &ask("/admin", "acme"), true)
        .await
        .expect("explains");
    assert_eq!((fail.decision, fail.reason), ("deny", "condition_failed"));
    let text = render_text(&fail);
    assert!(
        text.contains(
            "spec.rules[0].when[0] `'admin' in claims.roles` is false (claims.roles = [\"user\"])"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn a_metadata_request_is_explained_as_answered_by_tollgate() {
    let policy = crate::fixtures::mk_policy(
        "mcp",
        "{match: {hosts: [api.example.com], paths: [/mcp]}, resourceMetadata: {resource: 'https://api.example.com/mcp'}}",
    );
    let snapshot = Snapshot::build(vec![policy], DefaultAction::Deny).0;
    let request = ExplainRequest {
        token: None,
        host: Some("api.example.com".into()),
        path: Some("/.well-known/oauth-protected-resource/mcp".into()),
        method: Some("GET".into()),
        headers: Vec::new(),
        at: None,
        client_certificate: None,
        scheme: None,
    };
    let explanation = explain(&snapshot, &request, true).await.expect("explains");
    assert_eq!(explanation.decision, "answer");
    assert_eq!(explanation.status, 200);
    assert_eq!(explanation.reason, "resource_metadata");
    assert_eq!(explanation.policy.as_deref(), Some("test/mcp"));
    let text = render_text(&explanation);
    assert!(
        text.contains("protected resource metadata of https://api.example.com/mcp (RFC 9728)"),
        "{text}"
    );
    assert!(
        text.contains("ANSWERED 200 resource_metadata: answered with the protected resource metadata of https://api.example.com/mcp (by tollgate; the upstream is not called)"),
        "{text}"
    );
}

#[tokio::test]
async fn an_api_key_is_explained_by_its_id_never_its_value() {
    let snapshot = load_files(
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/policies/api-keys.yaml"
        )),
        KeySources::offline().expect("client"),
    )
    .expect("the example loads");
    let key = "0d9c4b1f6e2a8d7c5b3a1f0e9d8c7b6a5f4e3d2c1b0a9f8e";
    let id = crate::apikeys::key_id(&crate::apikeys::digest(key.as_bytes()));
    let request = |key: &str| ExplainRequest {
        headers: vec![("x-api-key".into(), key.into())],
        ..ExplainRequest::default()
    };
    let explanation = explain(&snapshot, &request(key), true)
        .await
        .expect("explains");
    let text = render_text(&explanation);
    assert!(explanation.allowed(), "{text}");
    assert!(text.contains(&format!("key {id} of acme")), "{text}");
    assert!(!text.contains(&key[..12]), "{text}");

    let wrong = format!("{}0", &key[..key.len() - 1]);
    let explanation = explain(&snapshot, &request(&wrong), true)
        .await
        .expect("explains");
    let text = render_text(&explanation);
    assert_eq!(explanation.reason, "api_key_invalid", "{text}");
    let wrong_id = crate::apikeys::key_id(&crate::apikeys::digest(wrong.as_bytes()));
    assert!(text.contains(&wrong_id), "{text}");
    assert!(!text.contains(&wrong[..12]), "{text}");
}

#[tokio::test]
async fn the_certificate_binding_is_explained() {
    let (mine, digest) = crate::fixtures::client_certificate(&["billing.example"]);
    let (other, _) = crate::fixtures::client_certificate(&["billing.example"]);
    let thumbprint = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest);
    let bound = token(json!({"cnf": {"x5t#S256": thumbprint}}));
    let ask = |certificate: Option<&str>| ExplainRequest {
        token: Some(bound.clone()),
        at: Some(at()),
        host: Some("api.example.com".into()),
        path: Some("/orders/1".into()),
        client_certificate: certificate.map(str::to_owned),
        ..ExplainRequest::default()
    };
    let allowed = explain(&orders(), &ask(Some(&mine)), true)
        .await
        .expect("explains");
    assert!(allowed.allowed());
    let text = render_text(&allowed);
    assert!(
        text.contains(
            "cnf.x5t#S256 matches the client certificate: subject \"CN=billing-client,O=Partners\""
        ),
        "{text}"
    );
    assert!(text.contains(&thumbprint), "{text}");
    for (certificate, reason, hint) in [
        (
            Some(other.as_str()),
            "certificate_binding_mismatch",
            "the certificate the token was issued for",
        ),
        (None, "certificate_missing", "include_peer_certificate"),
    ] {
        let denied = explain(&orders(), &ask(certificate), true)
            .await
            .expect("explains");
        assert_eq!((denied.decision, denied.reason), ("deny", reason));
        let text = render_text(&denied);
        assert!(text.contains(hint), "{text}");
    }
}

#[tokio::test]
async fn the_dpop_proof_checks_are_explained() {
    let snapshot = single(mk_policy(
        "dpop",
        "{match: {hosts: [api.example.com], paths: [/orders]}, dpop: {mode: required}}",
    ));
    let client = SigningKey::ec("client", "ES256").expect("ec key");
    let token = token(json!({"cnf": {"jkt": client.thumbprint().expect("jkt")}}));
    let proof = |htm: &str| {
        client
            .dpop_proof(&json!({"jti": format!("explain-{htm}"), "htm": htm,
                "htu": "https://api.example.com/orders/1", "iat": AT as i64,
                "ath": crate::local_issuer::dpop_ath(&token)}))
            .expect("proof")
    };
    let ask = |proof: String| ExplainRequest {
        token: Some(token.clone()),
        host: Some("api.example.com".into()),
        path: Some("/orders/1".into()),
        headers: vec![("DPoP".into(), proof)],
        at: Some(at()),
        ..ExplainRequest::default()
    };
    let good = explain(&snapshot, &ask(proof("GET")), true)
        .await
        .expect("explains");
    assert_eq!(good.reason, "valid", "{}", render_text(&good));
    let text = render_text(&good);
    assert!(text.contains("the proof (ES256, jwk thumbprint"), "{text}");
    assert!(
        text.contains("is for GET https://api.example.com/orders/1"),
        "{text}"
    );
    assert!(
        text.contains("the proof's jti is new on this replica"),
        "{text}"
    );
    let wrong = explain(&snapshot, &ask(proof("POST")), true)
        .await
        .expect("explains");
    assert_eq!(wrong.reason, "dpop_proof_invalid");
    let text = render_text(&wrong);
    assert!(
        text.contains("the DPoP proof is for method \"POST\", the request is GET"),
        "{text}"
    );
}
