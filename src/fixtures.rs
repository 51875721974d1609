//! Test fixtures: generated keys (once per test binary), policies from YAML snippets, and
//! compiled policies with inline keys. Every token a test uses is minted with these keys.

use std::sync::{Arc, LazyLock};

use serde_json::{Value, json};

use crate::jwks::KeySources;
use crate::local_issuer::{SigningKey, jwks, now_secs};
use crate::policy::{CompileContext, CompileError, FileSecrets, JwtPolicySpec, Policy, compile};

pub const ISSUER: &str = "https://idp.example.com/";
pub const AUDIENCE: &str = "api://orders";

pub static RSA: LazyLock<SigningKey> =
    LazyLock::new(|| SigningKey::rsa("rsa-1", "RS256", 2048).expect("rsa key"));
pub static RSA_PS: LazyLock<SigningKey> =
    LazyLock::new(|| SigningKey::rsa("rsa-ps", "PS256", 2048).expect("rsa key"));
pub static EC: LazyLock<SigningKey> =
    LazyLock::new(|| SigningKey::ec("ec-1", "ES256").expect("ec key"));
pub static ED: LazyLock<SigningKey> =
    LazyLock::new(|| SigningKey::ed25519("ed-1").expect("ed key"));
/// A key no policy trusts.
pub static ROGUE: LazyLock<SigningKey> =
    LazyLock::new(|| SigningKey::rsa("rsa-1", "RS256", 2048).expect("rsa key"));

/// The JWKS of the trusted keys.
pub fn trusted_jwks() -> Value {
    jwks(&[&RSA, &RSA_PS, &EC, &ED])
}

/// Claims of a token that passes the default policy.
pub fn good_claims() -> Value {
    let now = now_secs();
    json!({"iss": ISSUER, "sub": "user-1", "aud": AUDIENCE, "iat": now - 10, "exp": now + 600,
        "scp": "orders.read orders.write", "roles": ["user"]})
}

/// `good_claims` with some members replaced (`null` removes a member).
pub fn claims_with(changes: Value) -> Value {
    let mut claims = good_claims();
    if let (Some(target), Some(changes)) = (claims.as_object_mut(), changes.as_object()) {
        for (k, v) in changes {
            if v.is_null() {
                target.remove(k);
            } else {
                target.insert(k.clone(), v.clone());
            }
        }
    }
    claims
}

/// Parses a spec from YAML.
pub fn spec(yaml: &str) -> JwtPolicySpec {
    serde_yaml::from_str(yaml).expect("test spec parses")
}

/// A spec with one issuer (inline trusted keys) plus `extra` YAML merged at the top level.
pub fn spec_with(extra: &str) -> JwtPolicySpec {
    let mut base: serde_json::Map<String, Value> = serde_json::from_value(json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "jwks": trusted_jwks()}],
    }))
    .expect("object");
    if !extra.trim().is_empty() {
        let extra: serde_json::Map<String, Value> =
            serde_yaml::from_str(extra).expect("extra yaml");
        base.extend(extra);
    }
    serde_json::from_value(Value::Object(base)).expect("spec")
}

/// Compiles a spec offline (remote sources are created but never fetched).
pub fn try_compile(name: &str, spec: &JwtPolicySpec) -> Result<Policy, CompileError> {
    compile_with(&KeySources::offline().expect("client"), "test", name, spec)
}

/// Compiles a spec with the given key source registry.
pub fn compile_with(
    sources: &KeySources,
    namespace: &str,
    name: &str,
    spec: &JwtPolicySpec,
) -> Result<Policy, CompileError> {
    let secrets = FileSecrets::new(None);
    compile(
        namespace,
        name,
        spec,
        &CompileContext {
            key_sources: sources,
            secrets: &secrets,
        },
    )
}

/// Compiles a spec that must be valid.
pub fn mk_policy(name: &str, extra: &str) -> Arc<Policy> {
    Arc::new(try_compile(name, &spec_with(extra)).expect("policy compiles"))
}

/// Serves `app` on a port of 127.0.0.1 chosen at run time, for as long as the test runs.
pub async fn serve(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// A policy `namespace/name` attached (`targetRefs`) to what `targets` (YAML) names.
pub fn targeting(namespace: &str, name: &str, targets: &str) -> Arc<Policy> {
    Arc::new(
        compile_with(
            &KeySources::offline().expect("client"),
            namespace,
            name,
            &spec_with(&format!("{{targetRefs: {targets}}}")),
        )
        .expect("policy compiles"),
    )
}

/// `policies` with the route entries the controller derives for them from `gateways`
/// `(namespace, name, spec YAML)` and `routes` `(namespace, name, created, spec YAML)`; every
/// policy counts as created at the same time. Panics when a policy's routes cannot be judged.
pub fn attach_to(
    policies: &[Arc<Policy>],
    gateways: &[(&str, &str, &str)],
    routes: &[(&str, &str, &str, &str)],
) -> Vec<Arc<Policy>> {
    use crate::policy::gateway::{self, Attacher, GatewayObject, RouteObject};
    let gateways: std::collections::BTreeMap<_, _> = gateways
        .iter()
        .map(|(namespace, name, yaml)| {
            let gateway = GatewayObject {
                namespace: namespace.to_string(),
                name: name.to_string(),
                spec: serde_yaml::from_str(yaml).expect("gateway"),
            };
            ((namespace.to_string(), name.to_string()), gateway)
        })
        .collect();
    let routes: std::collections::BTreeMap<_, _> = routes
        .iter()
        .map(|(namespace, name, created, yaml)| {
            let route = RouteObject {
                namespace: namespace.to_string(),
                name: name.to_string(),
                created: created.to_string(),
                spec: serde_yaml::from_str(yaml).expect("route"),
            };
            ((namespace.to_string(), name.to_string()), route)
        })
        .collect();
    let attachers: Vec<Attacher<'_>> = policies
        .iter()
        .map(|p| Attacher {
            id: p.id.clone(),
            namespace: p.namespace(),
            created: "2026-01-01T00:00:00Z",
            targets: &p.targets,
        })
        .collect();
    let attachments = gateway::attach(&attachers, &routes, &gateways);
    policies
        .iter()
        .map(|p| {
            let attachment = &attachments[&p.id];
            assert!(attachment.problems.is_empty(), "{:?}", attachment.problems);
            Arc::new(p.attach(attachment.entries.clone()))
        })
        .collect()
}

/// A client certificate for `CN=billing-client,O=Partners` (serial `0a`, valid 2026–2030)
/// with `dns_names`, a SPIFFE URI, an email and an IP address as SANs: the text Envoy sends
/// for it (URL-encoded PEM) and the SHA-256 of its DER, computed here.
pub fn client_certificate(dns_names: &[&str]) -> (String, Vec<u8>) {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Partners");
    params
        .distinguished_name
        .push(DnType::CommonName, "billing-client");
    params.subject_alt_names = dns_names
        .iter()
        .map(|n| SanType::DnsName((*n).try_into().expect("ia5")))
        .chain([
            SanType::URI("spiffe://partners.example/billing".try_into().expect("ia5")),
            SanType::Rfc822Name("ops@partners.example".try_into().expect("ia5")),
            SanType::IpAddress("192.0.2.7".parse().expect("ip")),
        ])
        .collect();
    params.serial_number = Some(vec![0x0a].into());
    params.not_before = rcgen::date_time_ymd(2026, 1, 1);
    params.not_after = rcgen::date_time_ymd(2030, 1, 1);
    let cert = params
        .self_signed(&KeyPair::generate().expect("key"))
        .expect("cert");
    let encoded =
        percent_encoding::utf8_percent_encode(&cert.pem(), percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.der());
    (encoded, digest.as_ref().to_vec())
}
