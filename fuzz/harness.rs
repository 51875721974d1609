//! What each fuzz target runs on one input. Shared by the cargo-fuzz targets (`fuzz_targets/`)
//! and by `tests/fuzz_corpus.rs`, which replays the committed corpora (`fuzz/corpus/<target>/`)
//! in every `cargo test`. A panic, or a broken invariant (an `assert!` here), is a finding.
//!
//! The oracle of `token` and `check`: tollgate may allow a request only if it carries a JWT whose
//! ES256 signature verifies with the fuzzing key, checked here with aws-lc-rs directly, not
//! through tollgate's own parser. Every other input is denied, whatever the fuzzer builds.

#![allow(dead_code)] // each target uses its part

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use base64::Engine as _;
use prost::Message as _;
use tollgate::authz::AuthzService;
use tollgate::decision::{Decision, Reason};
use tollgate::jwks::{KeyKind, KeySet, KeySources};
use tollgate::metrics::Metrics;
use tollgate::policy::compile::{CompileContext, SecretSource, compile};
use tollgate::policy::files::parse_documents;
use tollgate::policy::spec::SecretSpec;
use tollgate::policy::{DefaultAction, SharedSnapshot, Snapshot};
use tollgate::proto::auth::CheckRequest;

pub const ISSUER: &str = "https://fuzz.tollgate.test/";
pub const AUDIENCE: &str = "api://fuzz";
pub const HOST: &str = "api.fuzz.test";

/// A P-256 key made for fuzzing only (its public half is all the fuzzed policy trusts). The
/// private half lets `tests/fuzz_corpus.rs` write valid seed tokens.
pub const PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgC67R45aYlTlQWh29
zW7h3TfZEIjpGXRB3y7Zjs4ampihRANCAASm5syDhvGqqDzulGNV4nLXylUTjPSz
yv5stBx/Y2872pyDt+2o1KhaWOraEC4+XvUxc33Nt5PRIS07j1q/gG77
-----END PRIVATE KEY-----
";
pub const PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEpubMg4bxqqg87pRjVeJy18pVE4z0
s8r+bLQcf2NvO9qcg7ftqNSoWljq2hAuPl71MXN9zbeT0SEtO49av4Bu+w==
-----END PUBLIC KEY-----
";
/// The same public key as an uncompressed point, for the independent oracle.
const PUBLIC_POINT: &str =
    "BKbmzIOG8aqoPO6UY1XictfKVROM9LPK/my0HH9jbzvanIO37ajUqFpY6toQLj5e9TFzfc23k9EhLTuPWr+Abvs=";
/// The AES-256 key (a JWK) the `jwe` target decrypts with.
pub const JWE_KEY: &str =
    r#"{"kty":"oct","kid":"enc1","k":"Rr1zTpMApIDd7nuU0NBLFRFGhB1-7LAMHtPXwHvYUb8"}"#;

/// The policy the `token` and `check` targets judge with.
pub fn policy_yaml() -> String {
    let pem = PUBLIC_PEM.replace('\n', "\n        ");
    format!(
        r#"apiVersion: tollgate.dev/v1alpha1
kind: JwtPolicy
metadata: {{name: fuzz, namespace: fuzz}}
spec:
  match: {{hosts: ["{HOST}"]}}
  issuers:
  - issuer: {ISSUER}
    audiences: ["{AUDIENCE}"]
    publicKeys:
    - kid: k1
      pem: |
        {pem}
  requiredClaims: [{{name: scp, separator: " ", values: [fuzz.read]}}]
  rules:
  - paths: [/admin]
    requiredClaims: [{{name: roles, values: [admin]}}]
  forward:
    claimsToHeaders: [{{claim: sub, header: x-user-id}}]
"#
    )
}

/// Secrets for fuzzed policies: never the file system; a fixed key for any reference.
struct NoFiles;

impl SecretSource for NoFiles {
    fn read(&self, _: &str, spec: &SecretSpec) -> Result<Vec<u8>, String> {
        match &spec.file {
            Some(name) if name.ends_with(".jwk") => Ok(JWE_KEY.as_bytes().to_vec()),
            Some(_) => Ok(b"fuzz-secret\n".to_vec()),
            None => Err("no such Secret while fuzzing".into()),
        }
    }
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    service: AuthzService,
    sources: Arc<KeySources>,
    decryptor: tollgate::jwe::Decryptor,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // Offline: remote key sources in fuzzed policies are created, never fetched.
        let sources = runtime.block_on(async { KeySources::offline().expect("key sources") });
        let docs = parse_documents(policy_yaml().as_bytes()).expect("the fuzz policy parses");
        let (_, doc) = docs.into_iter().next().expect("one document");
        let policy = compile(
            "fuzz",
            "fuzz",
            &doc.spec,
            &CompileContext {
                key_sources: &sources,
                secrets: &NoFiles,
            },
        )
        .expect("the fuzz policy compiles");
        let shared = SharedSnapshot::new(DefaultAction::Deny);
        shared.publish(Snapshot::build(vec![Arc::new(policy)], DefaultAction::Deny).0);
        shared.set_ready();
        let service = AuthzService::new(shared, Metrics::new(None, None));
        let keys = tollgate::jwe::parse_keys(JWE_KEY.as_bytes()).expect("the JWE key parses");
        Fixture {
            runtime,
            service,
            sources,
            decryptor: tollgate::jwe::Decryptor::new(keys, false),
        }
    })
}

/// Whether `token` is a compact JWS whose ES256 signature verifies with the fuzzing key.
fn signed_by_fuzz_key(token: &str) -> bool {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
    let Some((input, signature)) = token.rsplit_once('.') else {
        return false;
    };
    if input.matches('.').count() != 1 {
        return false;
    }
    let Ok(signature) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature) else {
        return false;
    };
    let point = base64::engine::general_purpose::STANDARD
        .decode(PUBLIC_POINT)
        .expect("point");
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
        .verify(input.as_bytes(), &signature)
        .is_ok()
}

/// Whether any whitespace- or comma-separated piece of `values` is signed by the fuzzing key.
fn carries_signed_token<'a>(mut values: impl Iterator<Item = &'a str>) -> bool {
    values.any(|value| {
        value
            .split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == ';')
            .any(signed_by_fuzz_key)
    })
}

fn assert_allow_is_earned(decision: &Decision, request: &CheckRequest) {
    let Decision::Allow(allow) = decision else {
        return;
    };
    assert_eq!(
        allow.reason,
        Reason::Valid,
        "only valid tokens are allowed here"
    );
    let http = request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .expect("an allowed request has HTTP attributes");
    let raw: Vec<String> = http
        .header_map
        .iter()
        .flat_map(|m| &m.headers)
        .map(|h| {
            if h.raw_value.is_empty() {
                h.value.clone()
            } else {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            }
        })
        .collect();
    let values = http
        .headers
        .values()
        .map(String::as_str)
        .chain(raw.iter().map(String::as_str))
        .chain(std::iter::once(http.path.as_str()));
    assert!(
        carries_signed_token(values),
        "allowed a request that carries no token signed by the fuzzing key: {request:?}"
    );
}

/// Decides `request` with the fuzz policy and checks the oracle.
fn judge(request: &CheckRequest) -> Decision {
    let fixture = fixture();
    let (decision, _) = fixture.runtime.block_on(fixture.service.decide(request));
    assert_allow_is_earned(&decision, request);
    // The answer Envoy gets is built for every decision.
    let _ = tollgate::authz::to_check_response(&decision);
    decision
}

/// A check request for `path` with these headers, as Envoy sends it.
pub fn request(path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    tollgate::client::check_request(&tollgate::client::Probe {
        host: HOST.into(),
        path: path.into(),
        method: "GET".into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
}

/// `token`: the input as a bearer token (JWS or JWE) on a protected path.
pub fn token(data: &[u8]) -> Option<Decision> {
    let text = std::str::from_utf8(data).ok()?;
    // What the token parsers make of it on their own, too.
    let _ = tollgate::jose::parse(text);
    let _ = tollgate::jwe::parse(text);
    let bearer = format!("Bearer {text}");
    Some(judge(&request("/orders", &[("authorization", &bearer)])))
}

/// `check`: the input as a protobuf `CheckRequest`, as Envoy would send it.
pub fn check(data: &[u8]) -> Option<Decision> {
    let request = CheckRequest::decode(data).ok()?;
    Some(judge(&request))
}

/// `jwe`: the input as a compact JWE, decrypted with the fixed AES key.
pub fn jwe(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = tollgate::jwe::parse(text) {
        let _ = parsed.header.says_nested_jwt();
    }
    if let Ok(decrypted) = fixture().decryptor.decrypt(text) {
        // Decryption is authenticated: what comes out was sealed with the key.
        let _ = decrypted;
    }
}

/// `jwks`: the input as a JWKS document. Whatever it holds, the keys kept obey the limits.
pub fn jwks(data: &[u8]) {
    let Ok(set) = KeySet::from_jwks_json(data) else {
        return;
    };
    assert!(set.len() <= tollgate::jwks::keyset::MAX_KEYS);
    for key in set.keys() {
        match key.kind {
            KeyKind::Rsa { bits } => assert!(bits >= 2048, "RSA key of {bits} bits kept"),
            KeyKind::Hmac { len } => panic!("a JWKS HMAC key ({len} bytes) was kept"),
            KeyKind::P256 | KeyKind::P384 | KeyKind::Ed25519 => {}
        }
    }
}

/// `policy`: the input as policy file content, parsed and compiled offline. A compiled policy
/// must also route and answer.
pub fn policy(data: &[u8]) {
    let Ok(docs) = parse_documents(data) else {
        return;
    };
    let fixture = fixture();
    let mut compiled = Vec::new();
    for (_, doc) in docs {
        let namespace = doc.metadata.namespace.as_deref().unwrap_or("default");
        let result = fixture.runtime.block_on(async {
            compile(
                namespace,
                &doc.metadata.name,
                &doc.spec,
                &CompileContext {
                    key_sources: &fixture.sources,
                    secrets: &NoFiles,
                },
            )
        });
        match result {
            Ok(policy) => compiled.push(Arc::new(policy)),
            Err(error) => assert!(!error.to_string().is_empty()),
        }
    }
    if compiled.is_empty() {
        return;
    }
    let snapshot = Snapshot::build(compiled, DefaultAction::Deny).0;
    let request = tollgate::engine::Request {
        host: HOST,
        path: "/orders/1",
        method: "GET",
        headers: tollgate::engine::Headers::List(&[]),
        policy: None,
    };
    let decision = fixture.runtime.block_on(tollgate::engine::check(
        &snapshot,
        &request,
        SystemTime::now(),
    ));
    // No token at all: never an allow unless the policy says anonymous.
    if let Decision::Allow(allow) = decision {
        assert_eq!(allow.reason, Reason::Anonymous, "allowed without a token");
    }
}
