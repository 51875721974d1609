//! What each fuzz target runs on one input. Shared by the cargo-fuzz targets (`fuzz_targets/`)
//! and by `tests/fuzz_corpus.rs`, which replays the committed corpora (`fuzz/corpus/<target>/`)
//! in every `cargo test`. A panic, or a broken invariant (an `assert!` here), is a finding.
//!
//! # The oracle of `token` and `check`: a reference model of the fuzz policy
//!
//! [`model`] decides from the request and the token alone what tollgate must answer under
//! [`policy_yaml`]. It is written from the documented semantics and shares no code with
//! tollgate: its own path reader (the refused classes of `policy::route`), its own policy and
//! rule selection, token extraction and method-override reading, its own strict JSON parser
//! ([`json`]), base64url, the ES256 signature checked with aws-lc-rs, and its own JWE
//! decryption ([`jwe_ref`], RFC 7516/7518 composed from aws-lc primitives). Every request gets
//! one of three verdicts:
//!
//! ```text
//! model says   tollgate allows                   tollgate denies
//! allow        same reason, else a finding        a finding: a wrong deny (an outage)
//! deny         a finding: a wrong allow           the reason, where the model names one
//! unsure       allowed for the reason the model   nothing to check
//!              expects, with a token signed by
//!              the fuzzing key (the old oracle)
//! ```
//!
//! Where both read the request path, the path tollgate judged must be the model's.
//!
//! The model is unsure only where the answer turns on something the documentation leaves
//! open: a time claim within a second of the clock skew's edge, JSON nested 121–140 deep
//! (serde_json stops at 128), and a number beyond `f64`. A member name given twice, at any
//! depth, makes the JSON invalid; serde_json's private `RawValue` marker is an ordinary member
//! name. A method override (header or `_method` parameter, decoded, PHP's name mangling
//! included) naming one other method means the request must pass as both methods.
//!
//! # The oracle of `jwe`
//!
//! [`jwe_ref::open`] decrypts the input with the fixed AES key on its own. It must agree with
//! tollgate's `Decryptor::decrypt`: the same plaintext when it decrypts; a refusal when it
//! refuses; and exactly `JweError::Failed` for every failure once a key was chosen (no
//! oracle). A token that decrypts must fail once its tag or ciphertext is altered. Tokens the
//! harness seals itself must decrypt to their known plaintext (checked once per process).

#![allow(dead_code)] // each target uses its part

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use prost::Message as _;
use tollgate::authz::AuthzService;
use tollgate::decision::{Decision, Reason};
use tollgate::jwe::JweError;
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
/// `namespace/name` of the fuzz policy, as a route's context extension names it.
pub const POLICY_ID: &str = "fuzz/fuzz";
/// The context extension with which a route selects a policy.
pub const POLICY_EXTENSION: &str = "tollgate.dev/policy";

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
/// The AES-256 key (a JWK) the `jwe` target decrypts with, and the fuzz policy's decryption key.
pub const JWE_KEY: &str =
    r#"{"kty":"oct","kid":"enc1","k":"Rr1zTpMApIDd7nuU0NBLFRFGhB1-7LAMHtPXwHvYUb8"}"#;
/// The `kid` and the bytes of [`JWE_KEY`], for the harness's own JWE code.
pub const JWE_KID: &str = "enc1";
const JWE_SECRET: &str = "Rr1zTpMApIDd7nuU0NBLFRFGhB1-7LAMHtPXwHvYUb8";

/// The clock skew of the fuzz policy (tollgate's default: the policy sets none).
const SKEW: f64 = 30.0;
/// Tokens larger than this are refused before any decoding (a documented limit).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The policy the `token` and `check` targets judge with. [`model`] holds the same policy as
/// data; keep the two in step.
pub fn policy_yaml() -> String {
    let pem = PUBLIC_PEM.replace('\n', "\n        ");
    format!(
        r#"apiVersion: tollgate.dev/v1alpha1
kind: JwtPolicy
metadata: {{name: fuzz, namespace: fuzz}}
spec:
  match:
    hosts: ["{HOST}"]
    paths: [/orders, /admin]
    methods: [GET, POST, PUT, PATCH, DELETE, OPTIONS]
  issuers:
  - issuer: {ISSUER}
    audiences: ["{AUDIENCE}"]
    publicKeys:
    - kid: k1
      pem: |
        {pem}
  decryption:
    keys: [{{file: enc.jwk}}]
  requiredClaims: [{{name: scp, separator: " ", values: [orders.read]}}]
  rules:
  - paths: [/orders/healthz]
    allowAnonymous: true
  - paths: [/admin, /orders/admin]
    requiredClaims: [{{name: roles, values: [admin]}}]
  - paths: [/orders]
    methods: [POST, PUT, PATCH, DELETE]
    requiredClaims: [{{name: scp, separator: " ", values: [orders.write]}}]
  - paths: [/orders/reports]
    methods: [GET]
    requiredClaims: [{{name: roles, values: [auditor, admin]}}]
  - paths: [/orders/reports]
    requiredClaims: [{{name: scp, separator: " ", values: [orders.read, orders.reports], match: all}}]
  - paths: [/admin/billing]
    requiredClaims: [{{name: billing.tier, values: [gold]}}]
  - paths: [/orders, /admin]
    methods: [OPTIONS]
    allowAnonymous: true
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
        let decryptor = tollgate::jwe::Decryptor::new(keys, false);
        jwe_known_answers(&decryptor);
        Fixture {
            runtime,
            service,
            sources,
            decryptor,
        }
    })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Canonical unpadded base64url (RFC 7515 §2), or `None`.
fn unb64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}

/// The fixed AES key of [`JWE_KEY`].
pub fn jwe_secret() -> Vec<u8> {
    unb64(JWE_SECRET).expect("the JWE key is base64url")
}

/// Whether `signature` is an ES256 signature of `input` by the fuzzing key (aws-lc-rs).
fn es256_verifies(input: &[u8], signature: &[u8]) -> bool {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
    let point = base64::engine::general_purpose::STANDARD
        .decode(PUBLIC_POINT)
        .expect("point");
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
        .verify(input, signature)
        .is_ok()
}

/// Whether `token` is a compact JWS whose ES256 signature verifies with the fuzzing key.
fn signed_by_fuzz_key(token: &str) -> bool {
    let Some((input, signature)) = token.rsplit_once('.') else {
        return false;
    };
    if input.matches('.').count() != 1 {
        return false;
    }
    unb64(signature).is_some_and(|signature| es256_verifies(input.as_bytes(), &signature))
}

/// Whether `token` is signed by the fuzzing key, or is a JWE for the fixed key around one.
fn carries_fuzz_signature(token: &str) -> bool {
    if signed_by_fuzz_key(token) {
        return true;
    }
    match jwe_ref::open(token, &jwe_secret(), JWE_KID) {
        jwe_ref::Opened::Plain { plaintext, .. } => {
            std::str::from_utf8(&plaintext).is_ok_and(signed_by_fuzz_key)
        }
        _ => false,
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A strict JSON parser (RFC 8259) for JOSE headers and claims: an object at the top, unique
/// member names in every object (JOSE asks to refuse duplicates; two parsers could read
/// different values). Written for the oracle; knows nothing of tollgate's parser.
pub mod json {
    /// A JSON value. Numbers keep their text (the fuzz policy never compares a number's text:
    /// none of its required values reads as a number).
    #[derive(Clone, Debug, PartialEq)]
    pub enum Json {
        Null,
        Bool(bool),
        Num(f64, String),
        Str(String),
        Arr(Vec<Json>),
        Obj(Vec<(String, Json)>),
    }

    pub type Object = Vec<(String, Json)>;

    /// The result of parsing, with the model's certainty.
    #[derive(Clone, Debug, PartialEq)]
    pub enum Parsed<T> {
        Ok(T),
        /// Not a JSON object with unique member names: any JOSE implementation refuses it.
        Invalid(String),
        /// Valid JSON whose reading depends on the parser (see the module docs of the harness).
        Unsure(String),
    }

    /// The member `name` of an object (names are unique).
    pub fn get<'a>(object: &'a [(String, Json)], name: &str) -> Option<&'a Json> {
        object
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    /// Containers nested deeper than this may hit a parser's recursion limit (serde_json's is
    /// 128 levels, counting the top object).
    const SURE_DEPTH: usize = 120;
    /// Beyond this, every parser the model knows of gives up.
    const MAX_DEPTH: usize = 140;

    struct Parser<'a> {
        text: &'a [u8],
        at: usize,
        deepest: usize,
        unsure: Option<String>,
    }

    type Step<T> = Result<T, String>;

    /// Parses a JSON text that must be one object with unique member names.
    pub fn object(bytes: &[u8]) -> Parsed<Object> {
        if std::str::from_utf8(bytes).is_err() {
            return Parsed::Invalid("not UTF-8".into());
        }
        let mut parser = Parser {
            text: bytes,
            at: 0,
            deepest: 0,
            unsure: None,
        };
        parser.space();
        if parser.peek() != Some(b'{') {
            return Parsed::Invalid("not a JSON object".into());
        }
        let value = match parser.value(0) {
            Ok(value) => value,
            Err(why) => return Parsed::Invalid(why),
        };
        parser.space();
        if parser.at != bytes.len() {
            return Parsed::Invalid("text after the object".into());
        }
        let Json::Obj(members) = value else {
            return Parsed::Invalid("not a JSON object".into());
        };
        for (i, (name, _)) in members.iter().enumerate() {
            if members[..i].iter().any(|(other, _)| other == name) {
                return Parsed::Invalid(format!("member {name:?} appears twice"));
            }
        }
        if parser.deepest > SURE_DEPTH {
            return Parsed::Unsure(format!(
                "nested {} deep, near a parser's recursion limit",
                parser.deepest
            ));
        }
        match parser.unsure {
            Some(why) => Parsed::Unsure(why),
            None => Parsed::Ok(members),
        }
    }

    impl Parser<'_> {
        fn peek(&self) -> Option<u8> {
            self.text.get(self.at).copied()
        }

        fn next(&mut self) -> Option<u8> {
            let b = self.peek()?;
            self.at += 1;
            Some(b)
        }

        fn space(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                self.at += 1;
            }
        }

        fn expect(&mut self, b: u8) -> Step<()> {
            if self.next() == Some(b) {
                Ok(())
            } else {
                Err(format!("expected {:?} at {}", char::from(b), self.at))
            }
        }

        fn literal(&mut self, word: &str, value: Json) -> Step<Json> {
            if self.text[self.at..].starts_with(word.as_bytes()) {
                self.at += word.len();
                Ok(value)
            } else {
                Err(format!("invalid literal at {}", self.at))
            }
        }

        /// A value enclosed by `depth` containers.
        fn value(&mut self, depth: usize) -> Step<Json> {
            self.space();
            match self.peek() {
                Some(b'{') => self.object(depth + 1),
                Some(b'[') => self.array(depth + 1),
                Some(b'"') => self.string().map(Json::Str),
                Some(b't') => self.literal("true", Json::Bool(true)),
                Some(b'f') => self.literal("false", Json::Bool(false)),
                Some(b'n') => self.literal("null", Json::Null),
                Some(b'-' | b'0'..=b'9') => self.number(),
                _ => Err(format!("no value at {}", self.at)),
            }
        }

        fn enter(&mut self, level: usize) -> Step<()> {
            self.deepest = self.deepest.max(level);
            if level > MAX_DEPTH {
                return Err(format!("nested deeper than {MAX_DEPTH}"));
            }
            Ok(())
        }

        fn object(&mut self, level: usize) -> Step<Json> {
            self.enter(level)?;
            self.expect(b'{')?;
            let mut members = Vec::new();
            self.space();
            if self.peek() == Some(b'}') {
                self.at += 1;
                return Ok(Json::Obj(members));
            }
            loop {
                self.space();
                if self.peek() != Some(b'"') {
                    return Err(format!("expected a member name at {}", self.at));
                }
                let name = self.string()?;
                if members.iter().any(|(other, _)| *other == name) {
                    return Err(format!("member {name:?} appears twice"));
                }
                self.space();
                self.expect(b':')?;
                let value = self.value(level)?;
                members.push((name, value));
                self.space();
                match self.next() {
                    Some(b',') => continue,
                    Some(b'}') => return Ok(Json::Obj(members)),
                    _ => return Err(format!("expected , or }} at {}", self.at)),
                }
            }
        }

        fn array(&mut self, level: usize) -> Step<Json> {
            self.enter(level)?;
            self.expect(b'[')?;
            let mut items = Vec::new();
            self.space();
            if self.peek() == Some(b']') {
                self.at += 1;
                return Ok(Json::Arr(items));
            }
            loop {
                items.push(self.value(level)?);
                self.space();
                match self.next() {
                    Some(b',') => continue,
                    Some(b']') => return Ok(Json::Arr(items)),
                    _ => return Err(format!("expected , or ] at {}", self.at)),
                }
            }
        }

        fn digits(&mut self) -> usize {
            let start = self.at;
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.at += 1;
            }
            self.at - start
        }

        fn number(&mut self) -> Step<Json> {
            let start = self.at;
            if self.peek() == Some(b'-') {
                self.at += 1;
            }
            match self.peek() {
                Some(b'0') => self.at += 1,
                Some(b'1'..=b'9') => {
                    self.digits();
                }
                _ => return Err(format!("invalid number at {start}")),
            }
            if self.peek() == Some(b'.') {
                self.at += 1;
                if self.digits() == 0 {
                    return Err(format!("invalid number at {start}"));
                }
            }
            if matches!(self.peek(), Some(b'e' | b'E')) {
                self.at += 1;
                if matches!(self.peek(), Some(b'+' | b'-')) {
                    self.at += 1;
                }
                if self.digits() == 0 {
                    return Err(format!("invalid number at {start}"));
                }
            }
            let text = std::str::from_utf8(&self.text[start..self.at])
                .map_err(|_| "number".to_string())?
                .to_string();
            let value: f64 = text.parse().map_err(|_| format!("number {text}"))?;
            if !value.is_finite() {
                self.unsure
                    .get_or_insert_with(|| format!("the number {text} is beyond f64"));
            }
            Ok(Json::Num(value, text))
        }

        fn hex4(&mut self) -> Step<u32> {
            let mut n = 0;
            for _ in 0..4 {
                let digit = self
                    .next()
                    .and_then(|b| char::from(b).to_digit(16))
                    .ok_or_else(|| format!("invalid \\u escape at {}", self.at))?;
                n = n * 16 + digit;
            }
            Ok(n)
        }

        fn string(&mut self) -> Step<String> {
            self.expect(b'"')?;
            let mut out: Vec<u8> = Vec::new();
            loop {
                let b = self
                    .next()
                    .ok_or_else(|| "unterminated string".to_string())?;
                match b {
                    b'"' => break,
                    b'\\' => {
                        let escaped = match self.next() {
                            Some(b'"') => '"',
                            Some(b'\\') => '\\',
                            Some(b'/') => '/',
                            Some(b'b') => '\u{8}',
                            Some(b'f') => '\u{c}',
                            Some(b'n') => '\n',
                            Some(b'r') => '\r',
                            Some(b't') => '\t',
                            Some(b'u') => {
                                let n = self.hex4()?;
                                let code = match n {
                                    0xDC00..=0xDFFF => {
                                        return Err("a lone low surrogate".into());
                                    }
                                    0xD800..=0xDBFF => {
                                        if self.next() != Some(b'\\') || self.next() != Some(b'u') {
                                            return Err("a lone high surrogate".into());
                                        }
                                        let low = self.hex4()?;
                                        if !(0xDC00..=0xDFFF).contains(&low) {
                                            return Err("a lone high surrogate".into());
                                        }
                                        0x10000 + ((n - 0xD800) << 10) + (low - 0xDC00)
                                    }
                                    n => n,
                                };
                                char::from_u32(code).ok_or_else(|| "escape".to_string())?
                            }
                            _ => return Err(format!("invalid escape at {}", self.at)),
                        };
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(escaped.encode_utf8(&mut buf).as_bytes());
                    }
                    0..=0x1f => {
                        return Err(format!("a control character in a string at {}", self.at));
                    }
                    b => out.push(b),
                }
            }
            String::from_utf8(out).map_err(|_| "not UTF-8".to_string())
        }
    }
}

/// An independent JWE decryption (RFC 7516 compact serialization, RFC 7518 algorithms) for one
/// shared AES key, composed from aws-lc primitives: AES key wrap (RFC 3394) on the raw block
/// cipher, AES-GCM, and AES-CBC with HMAC-SHA2 and PKCS#7 checked here.
pub mod jwe_ref {
    use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
    use aws_lc_rs::cipher::{
        self, DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext, UnboundCipherKey,
    };
    use aws_lc_rs::hmac;
    use aws_lc_rs::iv::FixedLength;

    use super::json::{self, Json, Parsed};
    use super::{b64, unb64};

    /// Every registered `alg` tollgate documents; only `A256KW` and `dir` fit a 32-byte key.
    pub const ALGS: [&str; 9] = [
        "RSA1_5",
        "RSA-OAEP",
        "RSA-OAEP-256",
        "ECDH-ES",
        "ECDH-ES+A128KW",
        "ECDH-ES+A256KW",
        "A128KW",
        "A256KW",
        "dir",
    ];

    /// Content encryption (`enc`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Enc {
        A128CbcHs256,
        A192CbcHs384,
        A256CbcHs512,
        A128Gcm,
        A256Gcm,
    }

    impl Enc {
        pub const ALL: [Enc; 5] = [
            Enc::A128CbcHs256,
            Enc::A192CbcHs384,
            Enc::A256CbcHs512,
            Enc::A128Gcm,
            Enc::A256Gcm,
        ];

        pub fn name(self) -> &'static str {
            match self {
                Enc::A128CbcHs256 => "A128CBC-HS256",
                Enc::A192CbcHs384 => "A192CBC-HS384",
                Enc::A256CbcHs512 => "A256CBC-HS512",
                Enc::A128Gcm => "A128GCM",
                Enc::A256Gcm => "A256GCM",
            }
        }

        pub fn parse(name: &str) -> Option<Enc> {
            Enc::ALL.into_iter().find(|enc| enc.name() == name)
        }

        /// CEK bytes (for CBC: the MAC key, then the AES key).
        pub fn key_len(self) -> usize {
            match self {
                Enc::A128CbcHs256 => 32,
                Enc::A192CbcHs384 => 48,
                Enc::A256CbcHs512 => 64,
                Enc::A128Gcm => 16,
                Enc::A256Gcm => 32,
            }
        }

        fn gcm(self) -> bool {
            matches!(self, Enc::A128Gcm | Enc::A256Gcm)
        }

        pub fn iv_len(self) -> usize {
            if self.gcm() { 12 } else { 16 }
        }

        pub fn tag_len(self) -> usize {
            match self {
                Enc::A192CbcHs384 => 24,
                Enc::A256CbcHs512 => 32,
                _ => 16,
            }
        }

        fn cbc(self) -> (hmac::Algorithm, &'static cipher::Algorithm) {
            match self {
                Enc::A192CbcHs384 => (hmac::HMAC_SHA384, &cipher::AES_192),
                Enc::A256CbcHs512 => (hmac::HMAC_SHA512, &cipher::AES_256),
                _ => (hmac::HMAC_SHA256, &cipher::AES_128),
            }
        }
    }

    /// What the reference makes of a compact JWE.
    #[derive(Clone, Debug, PartialEq)]
    pub enum Opened {
        /// It decrypts.
        Plain {
            plaintext: Vec<u8>,
            alg: String,
            enc: String,
        },
        /// Refused before a key was chosen: malformed, unsupported, `zip`, `crit`, or no key
        /// fits its `kid`, `alg` and `enc`.
        Refused(String),
        /// The key was chosen, and unwrapping or authenticated decryption failed.
        Failed,
        /// The header's JSON reads differently in different parsers.
        Unsure(String),
    }

    fn aes(key: &[u8]) -> Option<&'static cipher::Algorithm> {
        match key.len() {
            16 => Some(&cipher::AES_128),
            24 => Some(&cipher::AES_192),
            32 => Some(&cipher::AES_256),
            _ => None,
        }
    }

    const KW_IV: [u8; 8] = [0xA6; 8];

    /// RFC 3394 §2.2.1, on the raw AES block cipher.
    pub fn kw_wrap(kek: &[u8], key: &[u8]) -> Vec<u8> {
        let cipher =
            EncryptingKey::ecb(UnboundCipherKey::new(aes(kek).expect("kek"), kek).expect("kek"))
                .expect("ecb");
        let n = key.len() / 8;
        let mut a = KW_IV;
        let mut r: Vec<[u8; 8]> = key
            .chunks(8)
            .map(|c| c.try_into().expect("64-bit blocks"))
            .collect();
        for j in 0..6 {
            for (i, ri) in r.iter_mut().enumerate() {
                let mut block = [0u8; 16];
                block[..8].copy_from_slice(&a);
                block[8..].copy_from_slice(ri);
                cipher.encrypt(&mut block).expect("aes");
                let t = (n * j + i + 1) as u64;
                for (k, byte) in t.to_be_bytes().iter().enumerate() {
                    a[k] = block[k] ^ byte;
                }
                ri.copy_from_slice(&block[8..]);
            }
        }
        let mut out = a.to_vec();
        for block in r {
            out.extend_from_slice(&block);
        }
        out
    }

    /// RFC 3394 §2.2.2: the key, or `None` when the integrity check fails.
    pub fn kw_unwrap(kek: &[u8], wrapped: &[u8]) -> Option<Vec<u8>> {
        if !wrapped.len().is_multiple_of(8) || wrapped.len() < 24 {
            return None;
        }
        let cipher = DecryptingKey::ecb(UnboundCipherKey::new(aes(kek)?, kek).ok()?).ok()?;
        let n = wrapped.len() / 8 - 1;
        let mut a: [u8; 8] = wrapped[..8].try_into().ok()?;
        let mut r: Vec<[u8; 8]> = wrapped[8..]
            .chunks(8)
            .map(|c| c.try_into().expect("64-bit blocks"))
            .collect();
        for j in (0..6).rev() {
            for i in (0..n).rev() {
                let t = (n * j + i + 1) as u64;
                let mut block = [0u8; 16];
                for (k, byte) in t.to_be_bytes().iter().enumerate() {
                    block[k] = a[k] ^ byte;
                }
                block[8..].copy_from_slice(&r[i]);
                cipher.decrypt(&mut block, DecryptionContext::None).ok()?;
                a.copy_from_slice(&block[..8]);
                r[i].copy_from_slice(&block[8..]);
            }
        }
        (a == KW_IV).then(|| r.concat())
    }

    fn cbc_tag(enc: Enc, mac_key: &[u8], aad: &[u8], iv: &[u8], ct: &[u8]) -> Vec<u8> {
        let (mac, _) = enc.cbc();
        let mut input = Vec::with_capacity(aad.len() + iv.len() + ct.len() + 8);
        input.extend_from_slice(aad);
        input.extend_from_slice(iv);
        input.extend_from_slice(ct);
        input.extend_from_slice(&((aad.len() as u64) * 8).to_be_bytes());
        let tag = hmac::sign(&hmac::Key::new(mac, mac_key), &input);
        tag.as_ref()[..enc.tag_len()].to_vec()
    }

    /// RFC 7518 §5.2.2.2 and §5.3: authenticated decryption, or `None`.
    fn content_open(
        enc: Enc,
        cek: &[u8],
        aad: &[u8],
        iv: &[u8],
        ct: &[u8],
        tag: &[u8],
    ) -> Option<Vec<u8>> {
        if enc.gcm() {
            let alg = if enc == Enc::A256Gcm {
                &aead::AES_256_GCM
            } else {
                &aead::AES_128_GCM
            };
            let key = LessSafeKey::new(UnboundKey::new(alg, cek).ok()?);
            let mut buf = [ct, tag].concat();
            let nonce = Nonce::try_assume_unique_for_key(iv).ok()?;
            let len = key
                .open_in_place(nonce, Aad::from(aad), &mut buf)
                .ok()?
                .len();
            buf.truncate(len);
            return Some(buf);
        }
        let (mac_key, aes_key) = cek.split_at(cek.len() / 2);
        if cbc_tag(enc, mac_key, aad, iv, ct) != tag {
            return None;
        }
        if ct.is_empty() || !ct.len().is_multiple_of(16) {
            return None;
        }
        let (_, alg) = enc.cbc();
        let key = DecryptingKey::cbc(UnboundCipherKey::new(alg, aes_key).ok()?).ok()?;
        let iv: [u8; 16] = iv.try_into().ok()?;
        let mut buf = ct.to_vec();
        key.decrypt(&mut buf, DecryptionContext::Iv128(FixedLength::from(iv)))
            .ok()?;
        // PKCS#7: 1 to 16 bytes, each holding the count.
        let pad = usize::from(*buf.last()?);
        if pad == 0
            || pad > 16
            || buf[buf.len() - pad..]
                .iter()
                .any(|b| usize::from(*b) != pad)
        {
            return None;
        }
        buf.truncate(buf.len() - pad);
        Some(buf)
    }

    /// Encrypts `plaintext` as [`content_open`] reads it (for known answers and seeds).
    fn content_seal(
        enc: Enc,
        cek: &[u8],
        aad: &[u8],
        iv: &[u8],
        plaintext: &[u8],
    ) -> (Vec<u8>, Vec<u8>) {
        if enc.gcm() {
            let alg = if enc == Enc::A256Gcm {
                &aead::AES_256_GCM
            } else {
                &aead::AES_128_GCM
            };
            let key = LessSafeKey::new(UnboundKey::new(alg, cek).expect("cek"));
            let mut buf = plaintext.to_vec();
            let nonce = Nonce::try_assume_unique_for_key(iv).expect("iv");
            let tag = key
                .seal_in_place_separate_tag(nonce, Aad::from(aad), &mut buf)
                .expect("seal");
            return (buf, tag.as_ref().to_vec());
        }
        let (mac_key, aes_key) = cek.split_at(cek.len() / 2);
        let (_, alg) = enc.cbc();
        let key =
            EncryptingKey::cbc(UnboundCipherKey::new(alg, aes_key).expect("key")).expect("cbc");
        let pad = 16 - plaintext.len() % 16;
        let mut buf = plaintext.to_vec();
        buf.extend(std::iter::repeat_n(pad as u8, pad));
        let iv16: [u8; 16] = iv.try_into().expect("iv");
        key.less_safe_encrypt(&mut buf, EncryptionContext::Iv128(FixedLength::from(iv16)))
            .expect("encrypt");
        let tag = cbc_tag(enc, mac_key, aad, iv, &buf);
        (buf, tag)
    }

    /// Seals `plaintext` to `key` with `alg` (`A256KW` or `dir`) and `enc`; `header` is the
    /// protected header's JSON text as written (it must name the same `alg` and `enc`).
    pub fn seal(plaintext: &[u8], key: &[u8], alg: &str, enc: Enc, header: &str) -> String {
        let mut cek = vec![0u8; enc.key_len()];
        let mut iv = vec![0u8; enc.iv_len()];
        aws_lc_rs::rand::fill(&mut cek).expect("rng");
        aws_lc_rs::rand::fill(&mut iv).expect("rng");
        let encrypted_key = if alg == "dir" {
            cek = key.to_vec();
            Vec::new()
        } else {
            kw_wrap(key, &cek)
        };
        let protected = b64(header.as_bytes());
        let (ct, tag) = content_seal(enc, &cek, protected.as_bytes(), &iv, plaintext);
        format!(
            "{protected}.{}.{}.{}.{}",
            b64(&encrypted_key),
            b64(&iv),
            b64(&ct),
            b64(&tag)
        )
    }

    /// The same token with one bit of segment `index` (3: ciphertext, 4: tag) flipped, when
    /// that segment is not empty.
    pub fn flipped(token: &str, index: usize) -> Option<String> {
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut bytes = unb64(parts.get(index)?)?;
        *bytes.first_mut()? ^= 1;
        parts[index] = b64(&bytes);
        Some(parts.join("."))
    }

    /// Decrypts a compact JWE with the one AES key `key` (its `kid` is `kid`).
    pub fn open(token: &str, key: &[u8], kid: &str) -> Opened {
        let refused = |why: &str| Opened::Refused(why.to_string());
        if token.len() > super::MAX_TOKEN_BYTES {
            return refused("larger than 16 KiB");
        }
        let parts: Vec<&str> = token.split('.').collect();
        let [protected, encrypted_key, iv, ct, tag] = parts[..] else {
            return refused("not five segments");
        };
        let Some(header) = unb64(protected) else {
            return refused("the header is not base64url");
        };
        let header = match json::object(&header) {
            Parsed::Ok(header) => header,
            Parsed::Invalid(why) => return Opened::Refused(format!("header: {why}")),
            Parsed::Unsure(why) => return Opened::Unsure(format!("header: {why}")),
        };
        let text = |name: &str| -> Result<Option<&str>, Opened> {
            match json::get(&header, name) {
                None => Ok(None),
                Some(Json::Str(s)) => Ok(Some(s)),
                Some(_) => Err(Opened::Refused(format!("{name} is not a string"))),
            }
        };
        let members = (|| {
            let alg = text("alg")?.ok_or_else(|| refused("no alg"))?;
            let enc = text("enc")?.ok_or_else(|| refused("no enc"))?;
            let kid = text("kid")?;
            for name in ["cty", "typ", "zip", "apu", "apv"] {
                text(name)?;
            }
            Ok((alg, enc, kid))
        })();
        let (alg, enc_name, token_kid) = match members {
            Ok(members) => members,
            Err(refusal) => return refusal,
        };
        match json::get(&header, "crit") {
            None => {}
            Some(Json::Arr(items)) if items.iter().all(|i| matches!(i, Json::Str(_))) => {
                return refused("crit");
            }
            Some(_) => return refused("crit is not a list of names"),
        }
        let (Some(encrypted_key), Some(iv), Some(ct), Some(tag)) =
            (unb64(encrypted_key), unb64(iv), unb64(ct), unb64(tag))
        else {
            return refused("a segment is not base64url");
        };
        if !ALGS.contains(&alg) {
            return refused("unsupported alg");
        }
        let Some(enc) = Enc::parse(enc_name) else {
            return refused("unsupported enc");
        };
        if alg == "RSA1_5" {
            return refused("RSA1_5");
        }
        if json::get(&header, "zip").is_some() {
            return refused("zip");
        }
        if iv.len() != enc.iv_len() || tag.len() != enc.tag_len() {
            return refused("iv or tag of the wrong length");
        }
        for name in ["apu", "apv"] {
            if let Some(Json::Str(value)) = json::get(&header, name)
                && unb64(value).is_none()
            {
                return Opened::Refused(format!("{name} is not base64url"));
            }
        }
        // The key: an AES key fits A{len}KW, and dir when it is as long as the CEK.
        let fits = match alg {
            "A128KW" => key.len() == 16,
            "A256KW" => key.len() == 32,
            "dir" => key.len() == enc.key_len(),
            _ => false,
        };
        if !fits || token_kid.is_some_and(|k| k != kid) {
            return refused("no key fits");
        }
        // From here on every failure is the same one.
        let cek = if alg == "dir" {
            if !encrypted_key.is_empty() {
                return Opened::Failed;
            }
            key.to_vec()
        } else {
            match kw_unwrap(key, &encrypted_key) {
                Some(cek) if cek.len() == enc.key_len() => cek,
                _ => return Opened::Failed,
            }
        };
        match content_open(enc, &cek, protected.as_bytes(), &iv, &ct, &tag) {
            Some(plaintext) => Opened::Plain {
                plaintext,
                alg: alg.to_string(),
                enc: enc_name.to_string(),
            },
            None => Opened::Failed,
        }
    }
}

/// The reference model of the fuzz policy (see the crate docs): what tollgate must answer.
pub mod model {
    use std::collections::HashMap;

    use tollgate::decision::Reason;
    use tollgate::proto::auth::CheckRequest;

    use super::json::{self, Json, Object, Parsed};
    use super::{AUDIENCE, HOST, ISSUER, JWE_KID, POLICY_EXTENSION, POLICY_ID, SKEW};
    use super::{es256_verifies, jwe_ref, jwe_secret, unb64};

    /// A claim requirement: `values` (any, or all) among the claim's values.
    pub struct Need {
        pub claim: &'static str,
        pub separator: Option<&'static str>,
        pub all: bool,
        pub values: &'static [&'static str],
    }

    /// A rule of the fuzz policy.
    pub struct Rule {
        pub paths: &'static [&'static str],
        /// Empty: every method.
        pub methods: &'static [&'static str],
        pub anonymous: bool,
        pub needs: &'static [Need],
    }

    /// The fuzz policy of [`super::policy_yaml`], as data.
    pub const POLICY_PATHS: &[&str] = &["/orders", "/admin"];
    pub const POLICY_METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    pub const REQUIRED: &[Need] = &[Need {
        claim: "scp",
        separator: Some(" "),
        all: false,
        values: &["orders.read"],
    }];
    pub const RULES: &[Rule] = &[
        Rule {
            paths: &["/orders/healthz"],
            methods: &[],
            anonymous: true,
            needs: &[],
        },
        Rule {
            paths: &["/admin", "/orders/admin"],
            methods: &[],
            anonymous: false,
            needs: &[Need {
                claim: "roles",
                separator: None,
                all: false,
                values: &["admin"],
            }],
        },
        Rule {
            paths: &["/orders"],
            methods: &["POST", "PUT", "PATCH", "DELETE"],
            anonymous: false,
            needs: &[Need {
                claim: "scp",
                separator: Some(" "),
                all: false,
                values: &["orders.write"],
            }],
        },
        Rule {
            paths: &["/orders/reports"],
            methods: &["GET"],
            anonymous: false,
            needs: &[Need {
                claim: "roles",
                separator: None,
                all: false,
                values: &["auditor", "admin"],
            }],
        },
        Rule {
            paths: &["/orders/reports"],
            methods: &[],
            anonymous: false,
            needs: &[Need {
                claim: "scp",
                separator: Some(" "),
                all: true,
                values: &["orders.read", "orders.reports"],
            }],
        },
        Rule {
            paths: &["/admin/billing"],
            methods: &[],
            anonymous: false,
            needs: &[Need {
                claim: "billing.tier",
                separator: None,
                all: false,
                values: &["gold"],
            }],
        },
        Rule {
            paths: &["/orders", "/admin"],
            methods: &["OPTIONS"],
            anonymous: true,
            needs: &[],
        },
    ];

    /// Headers that ask an upstream to run another method.
    const OVERRIDE_HEADERS: [&str; 3] = [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ];

    /// What tollgate must answer.
    #[derive(Clone, Debug, PartialEq)]
    pub enum Verdict {
        /// Must allow, for this reason.
        Allow(Reason),
        /// Must not allow; when `reason` is set, must deny for it.
        Deny { why: String, reason: Option<Reason> },
        /// The model cannot tell (see the crate docs). An allow must still be for `reason`, and
        /// for [`Reason::Valid`] carry a token signed by the fuzzing key.
        Unsure { why: String, reason: Reason },
    }

    /// The verdict, the path as the model reads it, and the token it would judge.
    #[derive(Clone, Debug)]
    pub struct Expect {
        pub verdict: Verdict,
        pub path: Option<String>,
        pub token: Option<String>,
    }

    fn deny(why: impl Into<String>, reason: Option<Reason>) -> Verdict {
        Verdict::Deny {
            why: why.into(),
            reason,
        }
    }

    // ---- the request path --------------------------------------------------------------

    /// Reads a request target as the documented rules say: the query dropped; refused when an
    /// upstream could read it in more than one way; otherwise escapes of printable ASCII
    /// decoded except space, `#`, `%` and `?`, which stay escaped (upper-case hex) like
    /// escaped UTF-8. The error names the class.
    pub fn read_path(target: &str) -> Result<String, &'static str> {
        let path = target.split('?').next().unwrap_or_default();
        if path.len() > 8 * 1024 {
            return Err("longer than 8 KiB");
        }
        if !path.starts_with('/') {
            return Err("not origin-form");
        }
        // Decode once: (byte, whether it was escaped).
        let raw = path.as_bytes();
        let hex = |i: usize| raw.get(i).and_then(|b| char::from(*b).to_digit(16));
        let mut units: Vec<(u8, bool)> = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            if raw[i] == b'%' {
                let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                    return Err("invalid escape");
                };
                units.push(((hi * 16 + lo) as u8, true));
                i += 3;
            } else {
                units.push((raw[i], false));
                i += 1;
            }
        }
        let is_hex = |k: usize| units.get(k).is_some_and(|(b, _)| b.is_ascii_hexdigit());
        for (k, &(b, escaped)) in units.iter().enumerate() {
            match b {
                b'/' if escaped => return Err("encoded slash"),
                b'\\' => return Err("backslash"),
                b';' => return Err("path parameter"),
                b'#' if !escaped => return Err("fragment"),
                0..=0x1f | 0x7f => return Err("control character"),
                b' ' if !escaped => return Err("raw space"),
                0x80.. if !escaped => return Err("raw non-ASCII"),
                // Decoded once, an escape again: a second decoding changes the path.
                b'%' if is_hex(k + 1) && is_hex(k + 2) => return Err("double encoding"),
                _ => {}
            }
        }
        // Escaped bytes above 0x7F, run by run, must be UTF-8 (not overlong).
        let mut run: Vec<u8> = Vec::new();
        for &(b, escaped) in units.iter().chain(std::iter::once(&(0, false))) {
            if escaped && b >= 0x80 {
                run.push(b);
            } else if !run.is_empty() {
                if std::str::from_utf8(&run).is_err() {
                    return Err("invalid UTF-8");
                }
                run.clear();
            }
        }
        let mut out = String::with_capacity(raw.len());
        for (b, escaped) in units {
            if escaped && (b >= 0x80 || matches!(b, b' ' | b'#' | b'%' | b'?')) {
                out.push_str(&format!("%{b:02X}"));
            } else {
                out.push(char::from(b));
            }
        }
        let segments: Vec<&str> = out.split('/').skip(1).collect();
        for (k, segment) in segments.iter().enumerate() {
            if *segment == "." || *segment == ".." {
                return Err("dot segment");
            }
            if segment.is_empty() && k + 1 < segments.len() {
                return Err("empty segment");
            }
        }
        Ok(out)
    }

    // ---- selection -----------------------------------------------------------------

    /// `prefix` is `path` or a parent of it, on whole segments.
    fn under(prefix: &str, path: &str, fold: bool) -> bool {
        let Some(head) = path.get(..prefix.len()) else {
            return false;
        };
        let same = if fold {
            head.eq_ignore_ascii_case(prefix)
        } else {
            head == prefix
        };
        same && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
    }

    /// A method set (empty: all) covers `method`; `HEAD` is covered by `GET`.
    fn covers(methods: &[&str], method: &str) -> bool {
        methods.is_empty()
            || methods.iter().any(|m| m.eq_ignore_ascii_case(method))
            || (method.eq_ignore_ascii_case("HEAD") && methods.contains(&"GET"))
    }

    fn names(methods: &[&str], method: &str) -> bool {
        methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }

    /// `None`: the policy does not judge the request; `Some(rule)`: it does, with that rule.
    fn select(
        explicit: bool,
        host_ok: bool,
        path: &str,
        method: &str,
        fold: bool,
    ) -> Option<Option<usize>> {
        let judges = explicit
            || (host_ok
                && covers(POLICY_METHODS, method)
                && POLICY_PATHS.iter().any(|p| under(p, path, fold)));
        if !judges {
            return None;
        }
        // Longest prefix; a rule naming methods over one for all; for OPTIONS, a rule naming
        // OPTIONS first; then the first listed.
        let preflight = method.eq_ignore_ascii_case("OPTIONS")
            && RULES.iter().any(|r| names(r.methods, "OPTIONS"));
        let mut best: Option<(usize, (bool, usize, bool))> = None;
        for (i, rule) in RULES.iter().enumerate() {
            if !covers(rule.methods, method) {
                continue;
            }
            let Some(len) = rule
                .paths
                .iter()
                .filter(|p| under(p, path, fold))
                .map(|p| p.len())
                .max()
            else {
                continue;
            };
            let rank = (
                preflight && names(rule.methods, "OPTIONS"),
                len,
                !rule.methods.is_empty(),
            );
            if best.is_none_or(|(_, b)| rank > b) {
                best = Some((i, rank));
            }
        }
        Some(best.map(|(i, _)| i))
    }

    /// A host a proxy routes one way only: a DNS-ish name or a bracketed IPv6 literal, with an
    /// optional port of 1 to 5 digits (nginx and Go route `api.example.com:abc` to
    /// `api.example.com`). Empty is readable (and matches no host).
    fn host_readable(raw: &str) -> bool {
        let digits =
            |port: &str| (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit());
        if raw.is_empty() {
            return true;
        }
        if let Some(rest) = raw.strip_prefix('[') {
            let Some(end) = rest.find(']') else {
                return false;
            };
            let (inside, after) = (&rest[..end], &rest[end + 1..]);
            let literal = !inside.is_empty()
                && inside
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            return literal && (after.is_empty() || after.strip_prefix(':').is_some_and(digits));
        }
        let (name, port) = match raw.find(':') {
            Some(at) => (&raw[..at], Some(&raw[at + 1..])),
            None => (raw, None),
        };
        let name_ok = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        name_ok && port.is_none_or(|p| !name.is_empty() && digits(p))
    }

    /// The request's host is the policy's: any letter case, any port, a trailing dot.
    fn host_is_ours(raw: &str) -> bool {
        let host = raw.trim();
        if host.starts_with('[') {
            return false;
        }
        let host = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        host.strip_suffix('.')
            .unwrap_or(host)
            .eq_ignore_ascii_case(HOST)
    }

    // ---- headers, token, method override ------------------------------------------------

    /// The request headers as Envoy sends them: the `headers` map (lower-case names, repeated
    /// headers already joined), or, when that is empty, one entry per header line.
    pub enum Headers<'a> {
        Map(&'a HashMap<String, String>),
        List(Vec<(String, String)>),
    }

    impl Headers<'_> {
        fn get(&self, name: &str) -> Option<String> {
            match self {
                Headers::Map(map) => map.get(name).cloned(),
                Headers::List(list) => {
                    let values: Vec<&str> = list
                        .iter()
                        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.as_str())
                        .collect();
                    (!values.is_empty()).then(|| values.join(", "))
                }
            }
        }
    }

    enum Extracted {
        Token(String),
        Missing,
        Malformed(&'static str),
    }

    /// RFC 6750 §2.1: `Authorization: Bearer <b64token>`, one token.
    fn extract(headers: &Headers<'_>) -> Extracted {
        let Some(value) = headers.get("authorization") else {
            return Extracted::Missing;
        };
        let value = value.trim_start();
        let Some(rest) = value
            .get(..6)
            .filter(|scheme| scheme.eq_ignore_ascii_case("Bearer"))
            .map(|_| &value[6..])
        else {
            return Extracted::Missing;
        };
        if !rest.starts_with(' ') {
            return Extracted::Missing;
        }
        let token = rest.trim();
        if token.is_empty() {
            return Extracted::Malformed("the Bearer scheme without a token");
        }
        if token.contains([' ', ',']) {
            return Extracted::Malformed("more than one token");
        }
        let body = token.trim_end_matches('=');
        let b64token = |c: char| c.is_ascii_alphanumeric() || "-._~+/".contains(c);
        if body.is_empty() || !body.chars().all(b64token) {
            return Extracted::Malformed("not a b64token");
        }
        Extracted::Token(token.to_string())
    }

    /// `application/x-www-form-urlencoded` decoding, as frameworks read a query.
    fn form_decode(text: &str) -> Vec<u8> {
        let raw = text.as_bytes();
        let hex = |i: usize| raw.get(i).and_then(|b| char::from(*b).to_digit(16));
        let mut out = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            match (raw[i], hex(i + 1), hex(i + 2)) {
                (b'%', Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                }
                (b'+', _, _) => {
                    out.push(b' ');
                    i += 1;
                }
                (b, _, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }

    /// What the request's method-override headers and `_method` query parameters ask for.
    enum Override {
        /// Nothing, or the request's own method.
        None,
        /// One other method: the upstream may run it, so the request must pass as both.
        Other(String),
        /// Values that disagree, or one that is no method: refused.
        Refused(String),
    }

    fn is_method_token(value: &str) -> bool {
        !value.is_empty()
            && value.len() <= 32
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    }

    /// A parameter name as PHP reads it: spaces around dropped, ` `, `.` and `[` as `_`.
    fn php_name(name: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(name);
        text.trim()
            .bytes()
            .map(|b| {
                if matches!(b, b' ' | b'.' | b'[') {
                    b'_'
                } else {
                    b
                }
            })
            .collect()
    }

    fn method_override(headers: &Headers<'_>, target: &str, method: &str) -> Override {
        // Names in any letter case; a name given twice (two lines, or two spellings) is refused.
        let entries: Vec<(&str, &str)> = match headers {
            Headers::Map(map) => map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
            Headers::List(list) => list.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
        };
        let mut values: Vec<String> = Vec::new();
        for name in OVERRIDE_HEADERS {
            let found: Vec<&str> = entries
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
                .collect();
            if found.len() > 1 {
                return Override::Refused(format!("{name} given twice"));
            }
            values.extend(found.iter().map(|v| v.trim().to_string()));
        }
        let params = target.split_once('?').map_or("", |(_, q)| q);
        for pair in params.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if php_name(&form_decode(key)).eq_ignore_ascii_case(b"_method") {
                values.push(
                    String::from_utf8_lossy(&form_decode(value))
                        .trim()
                        .to_string(),
                );
            }
        }
        let mut other: Option<String> = None;
        for value in values {
            if value.eq_ignore_ascii_case(method) {
                continue;
            }
            if !is_method_token(&value) {
                return Override::Refused(format!("{value:?} is no method"));
            }
            match &other {
                Some(seen) if !seen.eq_ignore_ascii_case(&value) => {
                    return Override::Refused(format!("{seen} and {value} disagree"));
                }
                Some(_) => {}
                None => other = Some(value.to_ascii_uppercase()),
            }
        }
        match other {
            Some(method) => Override::Other(method),
            None => Override::None,
        }
    }

    // ---- the token -------------------------------------------------------------------

    /// A certain failure (first), or an uncertainty.
    #[derive(Clone, Debug, Default)]
    struct Judgement {
        fail: Option<String>,
        unsure: Option<String>,
    }

    impl Judgement {
        fn fail(&mut self, why: impl Into<String>) {
            if self.fail.is_none() {
                self.fail = Some(why.into());
            }
        }

        fn unsure(&mut self, why: impl Into<String>) {
            if self.unsure.is_none() {
                self.unsure = Some(why.into());
            }
        }
    }

    /// What the token says, apart from the clock and the rule.
    #[derive(Clone, Debug, Default)]
    struct TokenFacts {
        judgement: Judgement,
        claims: Option<Object>,
    }

    /// Microsoft Graph's audiences: tollgate refuses tokens for Graph, whose signatures only
    /// Microsoft can check (documented as `azure_graph_token`).
    fn is_graph_audience(aud: &str) -> bool {
        let aud = aud.trim_end_matches('/');
        aud == "00000003-0000-0000-c000-000000000000"
            || [
                "https://graph.microsoft.com",
                "https://graph.microsoft.us",
                "https://microsoftgraph.chinacloudapi.cn",
            ]
            .iter()
            .any(|graph| aud.eq_ignore_ascii_case(graph))
    }

    /// The values a claim holds, as text: a string split by the separator, the scalars of an
    /// array, or the scalar itself. Objects and `null` hold none.
    fn held(value: &Json, separator: Option<&str>) -> Vec<String> {
        fn scalar(value: &Json) -> Option<String> {
            match value {
                Json::Str(s) => Some(s.clone()),
                Json::Num(_, text) => Some(text.clone()),
                Json::Bool(b) => Some(b.to_string()),
                _ => None,
            }
        }
        match (value, separator) {
            (Json::Str(s), Some(sep)) => s
                .split(sep)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
            (Json::Arr(items), _) => items.iter().filter_map(scalar).collect(),
            (other, _) => scalar(other).into_iter().collect(),
        }
    }

    /// A claim by its literal name, else by a dotted path into nested objects.
    fn lookup<'a>(claims: &'a Object, name: &str) -> Option<&'a Json> {
        if let Some(value) = json::get(claims, name) {
            return Some(value);
        }
        if !name.contains('.') {
            return None;
        }
        let mut parts = name.split('.');
        let mut current = json::get(claims, parts.next()?)?;
        for part in parts {
            let Json::Obj(members) = current else {
                return None;
            };
            current = json::get(members, part)?;
        }
        Some(current)
    }

    fn meets(claims: &Object, need: &Need) -> bool {
        let Some(value) = lookup(claims, need.claim).filter(|v| **v != Json::Null) else {
            return false;
        };
        let held = held(value, need.separator);
        let has = |wanted: &&str| held.iter().any(|h| h == wanted);
        if need.all {
            need.values.iter().all(has)
        } else {
            need.values.iter().any(has)
        }
    }

    fn parsed(part: &str, result: Parsed<Object>, judgement: &mut Judgement) -> Option<Object> {
        match result {
            Parsed::Ok(object) => Some(object),
            Parsed::Invalid(why) => {
                judgement.fail(format!("the {part} is not a JSON object: {why}"));
                None
            }
            Parsed::Unsure(why) => {
                judgement.unsure(format!("the {part}: {why}"));
                None
            }
        }
    }

    /// A compact JWS: signed with ES256 by the fuzzing key (kid `k1` or none), for the issuer
    /// and audience, with `exp`, and the policy-wide claims.
    fn jws_facts(token: &str) -> TokenFacts {
        let mut j = Judgement::default();
        let parts: Vec<&str> = token.split('.').collect();
        let [header, payload, signature] = parts[..] else {
            j.fail("not three segments");
            return TokenFacts {
                judgement: j,
                claims: None,
            };
        };
        let (Some(header_bytes), Some(payload_bytes), Some(signature)) =
            (unb64(header), unb64(payload), unb64(signature))
        else {
            j.fail("a segment is not canonical base64url");
            return TokenFacts {
                judgement: j,
                claims: None,
            };
        };
        let signing_input = &token[..header.len() + 1 + payload.len()];
        if !es256_verifies(signing_input.as_bytes(), &signature) {
            j.fail("no ES256 signature of the fuzzing key");
        }
        if let Some(header) = parsed("header", json::object(&header_bytes), &mut j) {
            match json::get(&header, "alg") {
                Some(Json::Str(alg)) if alg == "ES256" => {}
                _ => j.fail("alg is not ES256"),
            }
            if json::get(&header, "crit").is_some() {
                j.fail("crit names extensions nobody implements");
            }
            match json::get(&header, "kid") {
                None => {}
                Some(Json::Str(kid)) if kid == "k1" => {}
                _ => j.fail("kid names no key of the issuer"),
            }
            for name in ["typ", "cty"] {
                if !matches!(json::get(&header, name), None | Some(Json::Str(_))) {
                    j.fail(format!("{name} is not a string"));
                }
            }
        }
        let claims = parsed("payload", json::object(&payload_bytes), &mut j);
        if let Some(claims) = &claims {
            match json::get(claims, "iss") {
                Some(Json::Str(iss)) if iss == ISSUER => {}
                _ => j.fail("iss is not the issuer"),
            }
            if let Some(aud) = json::get(claims, "aud") {
                if held(aud, None).iter().any(|a| is_graph_audience(a)) {
                    j.fail("aud names Microsoft Graph");
                }
                let audiences: Option<Vec<&str>> = match aud {
                    Json::Str(a) => Some(vec![a]),
                    Json::Arr(items) => items
                        .iter()
                        .map(|i| match i {
                            Json::Str(s) => Some(s.as_str()),
                            _ => None,
                        })
                        .collect(),
                    _ => None,
                };
                if !audiences.is_some_and(|list| list.contains(&AUDIENCE)) {
                    j.fail("aud does not name the audience (or is not strings)");
                }
            } else {
                j.fail("no aud");
            }
            match json::get(claims, "exp") {
                Some(Json::Num(..)) => {}
                Some(_) => j.fail("exp is not a number"),
                None => j.fail("no exp"),
            }
            for name in ["nbf", "iat"] {
                if !matches!(json::get(claims, name), None | Some(Json::Num(..))) {
                    j.fail(format!("{name} is not a number"));
                }
            }
            for need in REQUIRED {
                if !meets(claims, need) {
                    j.fail(format!("the policy's requiredClaims: {}", need.claim));
                }
            }
        }
        TokenFacts {
            judgement: j,
            claims,
        }
    }

    fn compact(token: &str, segments: usize) -> bool {
        token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && token.matches('.').count() + 1 == segments
    }

    /// A bearer token: a JWS, or a JWE for the policy's AES key around a JWS.
    fn token_facts(token: &str) -> TokenFacts {
        let failed = |why: &str| {
            let mut judgement = Judgement::default();
            judgement.fail(why);
            TokenFacts {
                judgement,
                claims: None,
            }
        };
        if token.len() > super::MAX_TOKEN_BYTES {
            return failed("larger than 16 KiB");
        }
        match token.matches('.').count() {
            2 => jws_facts(token),
            4 if compact(token, 5) => match jwe_ref::open(token, &jwe_secret(), JWE_KID) {
                jwe_ref::Opened::Plain { plaintext, .. } => {
                    let inner = std::str::from_utf8(&plaintext).unwrap_or_default();
                    if compact(inner, 5) {
                        failed("encrypted twice")
                    } else if compact(inner, 3) {
                        jws_facts(inner)
                    } else {
                        failed("the JWE holds no signed JWT")
                    }
                }
                jwe_ref::Opened::Refused(why) => failed(&format!("the JWE is refused: {why}")),
                jwe_ref::Opened::Failed => failed("the JWE does not decrypt"),
                jwe_ref::Opened::Unsure(why) => {
                    let mut facts = TokenFacts::default();
                    facts.judgement.unsure(format!("the JWE: {why}"));
                    facts
                }
            },
            _ => failed("neither a JWS nor a JWE"),
        }
    }

    thread_local! {
        /// The last token analysed (the `token` target judges one token on several routes).
        static LAST: std::cell::RefCell<Option<(String, TokenFacts)>> =
            const { std::cell::RefCell::new(None) };
    }

    fn token_facts_cached(token: &str) -> TokenFacts {
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            if let Some((seen, facts)) = &*last
                && seen == token
            {
                return facts.clone();
            }
            let facts = token_facts(token);
            *last = Some((token.to_string(), facts.clone()));
            facts
        })
    }

    /// The time claims against a clock read between `t0` and `t1` (seconds): `exp` in the
    /// future, `nbf` and `iat` not, each within the clock skew. Within a second of an edge, the
    /// model is unsure.
    fn clock(claims: &Object, t0: f64, t1: f64, j: &mut Judgement) {
        if let Some(Json::Num(exp, _)) = json::get(claims, "exp") {
            if t1 + 1.0 < exp + SKEW {
            } else if t0 - 1.0 >= exp + SKEW {
                j.fail("expired");
            } else {
                j.unsure("exp is at the edge of the clock skew");
            }
        }
        for name in ["nbf", "iat"] {
            if let Some(Json::Num(at, _)) = json::get(claims, name) {
                if t0 + SKEW - 1.0 >= *at {
                } else if t1 + SKEW + 1.0 < *at {
                    j.fail(format!("{name} is in the future"));
                } else {
                    j.unsure(format!("{name} is at the edge of the clock skew"));
                }
            }
        }
    }

    // ---- the request -------------------------------------------------------------------

    /// What tollgate must answer to `request` under the fuzz policy, with the clock read
    /// between `t0` and `t1`.
    pub fn expect(request: &CheckRequest, t0: f64, t1: f64) -> Expect {
        let http = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let Some(http) = http else {
            return Expect {
                verdict: deny("no HTTP attributes", Some(Reason::RequestMalformed)),
                path: None,
                token: None,
            };
        };
        let headers = match &http.header_map {
            Some(map) if http.headers.is_empty() => Headers::List(
                map.headers
                    .iter()
                    .map(|h| {
                        let value = if h.raw_value.is_empty() {
                            h.value.clone()
                        } else {
                            String::from_utf8_lossy(&h.raw_value).into_owned()
                        };
                        (h.key.to_ascii_lowercase(), value)
                    })
                    .collect(),
            ),
            _ => Headers::Map(&http.headers),
        };
        let explicit = request
            .attributes
            .as_ref()
            .and_then(|a| a.context_extensions.get(POLICY_EXTENSION))
            .filter(|p| !p.is_empty())
            .map(String::as_str);
        let host = if http.host.is_empty() {
            http.headers.get(":authority").map_or("", String::as_str)
        } else {
            &http.host
        };
        judge(host, &http.path, &http.method, &headers, explicit, t0, t1)
    }

    fn judge(
        host: &str,
        target: &str,
        method: &str,
        headers: &Headers<'_>,
        explicit: Option<&str>,
        t0: f64,
        t1: f64,
    ) -> Expect {
        let mut out = Expect {
            verdict: Verdict::Allow(Reason::Valid),
            path: None,
            token: None,
        };
        if !host_readable(host) {
            out.verdict = deny(
                "the host is not a host name with a numeric port",
                Some(Reason::RequestMalformed),
            );
            return out;
        }
        let path = match read_path(target) {
            Ok(path) => path,
            Err(class) => {
                out.verdict = deny(
                    format!("the path is refused ({class})"),
                    Some(Reason::RequestMalformed),
                );
                return out;
            }
        };
        out.path = Some(path.clone());
        let other = match method_override(headers, target, method) {
            Override::None => None,
            Override::Other(other) => Some(other),
            Override::Refused(why) => {
                out.verdict = deny(
                    format!("method overrides: {why}"),
                    Some(Reason::RequestMalformed),
                );
                return out;
            }
        };
        let (verdict, token) = route(host, &path, method, headers, explicit, t0, t1);
        out.token = token;
        out.verdict = verdict;
        // The upstream may run the other method: the request must pass as both, and the
        // decision is the one for the other method once the own one passes.
        if let Some(other) = other
            && !matches!(out.verdict, Verdict::Deny { .. })
        {
            let (as_other, token) = route(host, &path, &other, headers, explicit, t0, t1);
            out.verdict = match (&out.verdict, as_other) {
                (_, Verdict::Deny { why, reason }) => Verdict::Deny { why, reason },
                (Verdict::Unsure { why, .. }, Verdict::Allow(reason)) => Verdict::Unsure {
                    why: why.clone(),
                    reason,
                },
                (_, other_verdict) => other_verdict,
            };
            out.token = token.or(out.token);
        }
        out
    }

    /// The verdict on a request whose path reads as `path` and which asks for no other method;
    /// also the token judged, if any.
    fn route(
        host: &str,
        path: &str,
        method: &str,
        headers: &Headers<'_>,
        explicit: Option<&str>,
        t0: f64,
        t1: f64,
    ) -> (Verdict, Option<String>) {
        let explicit = match explicit {
            None => false,
            Some(POLICY_ID) => true,
            Some(_) => {
                return (
                    deny(
                        "the route names another policy",
                        Some(Reason::PolicyNotFound),
                    ),
                    None,
                );
            }
        };
        let host_ok = host_is_ours(host);
        let exact = select(explicit, host_ok, path, method, false);
        if path.bytes().any(|b| b.is_ascii_uppercase())
            && select(explicit, host_ok, path, method, true) != exact
        {
            return (
                deny(
                    "letter case changes the policy or rule, and match.pathCase is unset",
                    Some(Reason::RequestMalformed),
                ),
                None,
            );
        }
        let Some(rule) = exact else {
            return (deny("no policy judges it", Some(Reason::NoPolicy)), None);
        };
        let rule = rule.map(|i| &RULES[i]);
        if rule.is_some_and(|r| r.anonymous) {
            return (Verdict::Allow(Reason::Anonymous), None);
        }
        let token = match extract(headers) {
            Extracted::Missing => {
                return (deny("no bearer token", Some(Reason::TokenMissing)), None);
            }
            Extracted::Malformed(why) => return (deny(why, Some(Reason::TokenMalformed)), None),
            Extracted::Token(token) => token,
        };
        let facts = token_facts_cached(&token);
        let mut j = facts.judgement;
        if let Some(claims) = &facts.claims {
            clock(claims, t0, t1, &mut j);
            for need in rule.map_or(&[][..], |r| r.needs) {
                if !meets(claims, need) {
                    j.fail(format!("the rule's requiredClaims: {}", need.claim));
                }
            }
        }
        let verdict = match (j.fail, j.unsure) {
            (Some(why), _) => deny(why, None),
            (None, Some(why)) => Verdict::Unsure {
                why,
                reason: Reason::Valid,
            },
            (None, None) => Verdict::Allow(Reason::Valid),
        };
        (verdict, Some(token))
    }
}

/// Decides `request` with the fuzz policy and checks it against the model.
fn judge(request: &CheckRequest) -> Decision {
    let fixture = fixture();
    let t0 = now();
    let (decision, _) = fixture.runtime.block_on(fixture.service.decide(request));
    let t1 = now();
    let expect = model::expect(request, t0, t1);
    assert_agrees(&decision, &expect, request);
    // The answer Envoy gets: an allow, encoded as served, is the built message byte for byte.
    let built = prost::Message::encode_to_vec(&tollgate::authz::to_check_response(&decision));
    let served = prost::Message::encode_to_vec(&tollgate::authz::to_answer(&decision));
    assert_eq!(
        served, built,
        "the served answer differs from the built message"
    );
    decision
}

fn assert_agrees(decision: &Decision, expect: &model::Expect, request: &CheckRequest) {
    use model::Verdict;
    let judged = match decision {
        Decision::Allow(allow) => allow.path.as_deref(),
        Decision::Deny(deny) => deny.path.as_deref(),
    };
    if let (Some(model), Some(judged)) = (expect.path.as_deref(), judged) {
        assert_eq!(
            model, judged,
            "tollgate judged another path than the model reads: {request:?}"
        );
    }
    match (decision, &expect.verdict) {
        (Decision::Allow(allow), Verdict::Deny { why, .. }) => panic!(
            "WRONG ALLOW: tollgate allowed ({:?}, path {:?}) what the model refuses: {why}\n{request:?}",
            allow.reason, allow.path
        ),
        (Decision::Allow(allow), Verdict::Allow(reason)) => assert_eq!(
            allow.reason, *reason,
            "allowed for another reason than the model's: {request:?}"
        ),
        (Decision::Allow(allow), Verdict::Unsure { why, reason }) => {
            assert_eq!(
                allow.reason, *reason,
                "allowed for another reason than the model's ({why}): {request:?}"
            );
            if *reason == Reason::Valid {
                assert!(
                    expect.token.as_deref().is_some_and(carries_fuzz_signature),
                    "WRONG ALLOW: the token is not signed by the fuzzing key ({why}): {request:?}"
                );
            }
        }
        (Decision::Deny(deny), Verdict::Allow(reason)) => panic!(
            "WRONG DENY: tollgate denied ({:?}: {}) what the model allows ({reason:?})\n{request:?}",
            deny.reason, deny.description
        ),
        (
            Decision::Deny(deny),
            Verdict::Deny {
                why,
                reason: Some(reason),
            },
        ) => assert_eq!(
            deny.reason, *reason,
            "denied for another reason than the model's ({why}; tollgate: {}): {request:?}",
            deny.description
        ),
        (Decision::Deny(_), _) => {}
    }
}

/// A check request for `method` `path` with these headers, as Envoy sends it.
pub fn request_with(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    tollgate::client::check_request(&tollgate::client::Probe {
        host: HOST.into(),
        path: path.into(),
        method: method.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
}

/// A `GET` check request for `path` with these headers, as Envoy sends it.
pub fn request(path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    request_with("GET", path, headers)
}

/// The routes the `token` target judges every token on: policy-wide claims only, a
/// method-scoped rule, `HEAD` under a `GET` rule, and a dotted claim.
pub const TOKEN_ROUTES: [(&str, &str); 4] = [
    ("GET", "/orders"),
    ("POST", "/orders/7"),
    ("HEAD", "/orders/reports/q1"),
    ("DELETE", "/admin/billing/1"),
];

/// `token`: the input as a bearer token (JWS or JWE), judged on each of [`TOKEN_ROUTES`].
pub fn token(data: &[u8]) -> Vec<Decision> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Vec::new();
    };
    // What the token parsers make of it on their own, too.
    let _ = tollgate::jose::parse(text);
    let _ = tollgate::jwe::parse(text);
    let bearer = format!("Bearer {text}");
    TOKEN_ROUTES
        .iter()
        .map(|(method, path)| judge(&request_with(method, path, &[("authorization", &bearer)])))
        .collect()
}

/// `check`: the input as a protobuf `CheckRequest`, as Envoy would send it.
pub fn check(data: &[u8]) -> Option<Decision> {
    let request = CheckRequest::decode(data).ok()?;
    Some(judge(&request))
}

/// Tokens sealed by [`jwe_ref`] must decrypt to their plaintext, and not once altered.
fn jwe_known_answers(decryptor: &tollgate::jwe::Decryptor) {
    let key = jwe_secret();
    for (alg, enc) in [
        ("A256KW", jwe_ref::Enc::A256Gcm),
        ("A256KW", jwe_ref::Enc::A128CbcHs256),
        ("A256KW", jwe_ref::Enc::A256CbcHs512),
        ("A256KW", jwe_ref::Enc::A192CbcHs384),
        ("A256KW", jwe_ref::Enc::A128Gcm),
        ("dir", jwe_ref::Enc::A256Gcm),
        ("dir", jwe_ref::Enc::A128CbcHs256),
    ] {
        let plaintext = format!("known answer {alg} {}", enc.name());
        let header = format!(
            r#"{{"alg":"{alg}","enc":"{}","kid":"{JWE_KID}"}}"#,
            enc.name()
        );
        let token = jwe_ref::seal(plaintext.as_bytes(), &key, alg, enc, &header);
        let decrypted = decryptor
            .decrypt(&token)
            .unwrap_or_else(|e| panic!("tollgate cannot decrypt {alg}/{}: {e}", enc.name()));
        assert_eq!(
            decrypted.plaintext,
            plaintext.as_bytes(),
            "{alg}/{}",
            enc.name()
        );
        for index in [3, 4] {
            let altered = jwe_ref::flipped(&token, index).expect("segment");
            assert_eq!(
                decryptor.decrypt(&altered).err(),
                Some(JweError::Failed),
                "{alg}/{}: segment {index} altered",
                enc.name()
            );
        }
    }
}

/// Tokens for the `jwe` seeds: sealed by the harness for the fixed key.
pub fn jwe_seal(plaintext: &[u8], alg: &str, enc: jwe_ref::Enc, header: &str) -> String {
    jwe_ref::seal(plaintext, &jwe_secret(), alg, enc, header)
}

/// `jwe`: the input as a compact JWE, decrypted with the fixed AES key, against [`jwe_ref`].
/// Tollgate's answer (`None` when the input is not text).
pub fn jwe(data: &[u8]) -> Option<Result<Vec<u8>, JweError>> {
    use jwe_ref::Opened;
    let text = std::str::from_utf8(data).ok()?;
    if let Ok(parsed) = tollgate::jwe::parse(text) {
        let _ = parsed.header.says_nested_jwt();
    }
    let decryptor = &fixture().decryptor;
    let got = decryptor.decrypt(text);
    let want = jwe_ref::open(text, &jwe_secret(), JWE_KID);
    match (&want, &got) {
        (
            Opened::Plain {
                plaintext,
                alg,
                enc,
            },
            Ok(decrypted),
        ) => {
            assert_eq!(&decrypted.plaintext, plaintext, "another plaintext: {text}");
            assert_eq!(
                (&decrypted.header.alg, &decrypted.header.enc),
                (alg, enc),
                "{text}"
            );
            assert!(decrypted.header.zip.is_none() && decrypted.header.crit.is_none());
        }
        (Opened::Plain { .. }, Err(e)) => {
            panic!("tollgate refuses ({e}) a JWE the reference decrypts: {text}")
        }
        (Opened::Failed, Err(JweError::Failed)) | (Opened::Refused(_), Err(_)) => {}
        (Opened::Failed, other) => panic!(
            "after the key was chosen, every failure must be JweError::Failed (no oracle); got {other:?}: {text}"
        ),
        (Opened::Refused(why), Ok(_)) => {
            panic!("tollgate decrypts a JWE the reference refuses ({why}): {text}")
        }
        (Opened::Unsure(_), Ok(decrypted)) => {
            let supported = jwe_ref::ALGS.contains(&decrypted.header.alg.as_str())
                && jwe_ref::Enc::parse(&decrypted.header.enc).is_some();
            assert!(
                supported,
                "decrypted with alg/enc it does not support: {text}"
            );
            assert!(decrypted.header.zip.is_none() && decrypted.header.crit.is_none());
        }
        (Opened::Unsure(_), Err(_)) => {}
    }
    if got.is_ok() {
        // Authenticated: the same token altered anywhere in ciphertext or tag fails, uniformly.
        for index in [3, 4] {
            if let Some(altered) = jwe_ref::flipped(text, index) {
                assert_eq!(
                    decryptor.decrypt(&altered).err(),
                    Some(JweError::Failed),
                    "segment {index} altered and still decrypts (or fails differently): {text}"
                );
            }
        }
    }
    Some(got.map(|decrypted| decrypted.plaintext))
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

/// Request paths the `policy` target tries on every compiled policy, besides those built from
/// its own prefixes: one of each refused class, and plain ones.
const POLICY_PATHS: [&str; 12] = [
    "/orders/1",
    "/",
    "/orders/healthz/../admin",
    "/orders/healthz/%2e%2e/admin",
    "/orders/healthz/..%2Fadmin",
    "/orders/healthz/..;/admin",
    "/orders/healthz/..%5Cadmin",
    "//admin",
    "/orders/healthz/%252e%252e/admin",
    "/orders/%C0%AE",
    "/orders/a%00",
    "/ORDERS/Admin",
];

/// `policy`: the input as policy file content, parsed and compiled offline. Compiled policies
/// must route and answer: without a token a request is allowed only by an `allowAnonymous` rule
/// that covers it, on a path the model reads, and both read a path alike.
pub fn policy(data: &[u8]) {
    let Ok(docs) = parse_documents(data) else {
        return;
    };
    let fixture = fixture();
    let mut compiled = Vec::new();
    let mut hosts: Vec<String> = vec![HOST.into()];
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
            Ok(policy) => {
                hosts.extend(
                    doc.spec
                        .match_
                        .hosts
                        .iter()
                        .take(2)
                        .map(|h| h.replace('*', "x")),
                );
                compiled.push(Arc::new(policy));
            }
            Err(error) => assert!(!error.to_string().is_empty()),
        }
    }
    if compiled.is_empty() {
        return;
    }
    // Paths: the fixed ones, and each prefix of the first rules (as written, below, another
    // letter case, and behind a dot segment).
    let mut paths: Vec<String> = POLICY_PATHS.iter().map(|p| p.to_string()).collect();
    for prefix in compiled
        .iter()
        .flat_map(|p| &p.rules)
        .flat_map(|r| &r.paths)
        .take(6)
    {
        {
            let p = prefix.as_str();
            paths.push(p.to_string());
            paths.push(format!("{p}/x"));
            paths.push(p.to_uppercase());
            paths.push(format!("{p}/../x"));
        }
    }
    let snapshot = Snapshot::build(compiled.clone(), DefaultAction::Deny).0;
    let empty = HashMap::new();
    for host in hosts.iter().take(3) {
        for path in &paths {
            for method in ["GET", "HEAD", "OPTIONS", "DELETE"] {
                let request = tollgate::engine::Request {
                    host,
                    path,
                    method,
                    headers: tollgate::engine::Headers::Map(&empty),
                    policy: None,
                    route: None,
                    source: Default::default(),
                };
                let decision = fixture.runtime.block_on(tollgate::engine::check(
                    &snapshot,
                    &request,
                    SystemTime::now(),
                ));
                let read = model::read_path(path);
                let judged = match &decision {
                    Decision::Allow(allow) => allow.path.clone(),
                    Decision::Deny(deny) => deny.path.clone(),
                };
                if let (Ok(read), Some(judged)) = (&read, &judged) {
                    assert_eq!(read, judged, "{method} {path}: read differently");
                }
                let Decision::Allow(allow) = decision else {
                    continue;
                };
                // No token at all: never an allow unless an anonymous rule covers it.
                assert_eq!(allow.reason, Reason::Anonymous, "allowed without a token");
                assert!(
                    read.is_ok(),
                    "WRONG ALLOW: {method} {path} allowed, a path the model refuses ({:?})",
                    read.err()
                );
                let judged = judged.expect("an allowed request has a path");
                let judged = judged.as_str();
                let covered = compiled.iter().flat_map(|p| &p.rules).any(|rule| {
                    rule.allow_anonymous
                        && (rule.methods.is_all()
                            || rule.methods.as_slice().iter().any(|m| {
                                m.eq_ignore_ascii_case(method) || (m == "GET" && method == "HEAD")
                            }))
                        && (rule.paths.is_empty()
                            || rule.paths.iter().any(|prefix| {
                                let prefix = prefix.as_str();
                                prefix == "/"
                                    || judged.get(..prefix.len()).is_some_and(|head| {
                                        head.eq_ignore_ascii_case(prefix)
                                            && matches!(
                                                judged.as_bytes().get(prefix.len()),
                                                None | Some(b'/')
                                            )
                                    })
                            }))
                });
                assert!(
                    covered,
                    "WRONG ALLOW: {method} {host} {path} allowed anonymously, and no allowAnonymous rule covers it"
                );
            }
        }
    }
}
