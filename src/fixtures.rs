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

/// The signing key of a realm of [`Realms`]: one per realm name, made on first use (EC P-256,
/// so many tenants cost little), its `kid` the realm's name.
pub fn realm_key(realm: &str) -> Arc<SigningKey> {
    static KEYS: LazyLock<std::sync::Mutex<std::collections::HashMap<String, Arc<SigningKey>>>> =
        LazyLock::new(Default::default);
    let mut keys = KEYS.lock().expect("lock");
    keys.entry(realm.to_string())
        .or_insert_with(|| Arc::new(SigningKey::ec(realm, "ES256").expect("ec key")))
        .clone()
}

/// A Keycloak-like identity provider on 127.0.0.1: `/realms/{realm}` discovery and the realm's
/// own key set for the realms it knows, 404 for any other realm (an unknown tenant). Records
/// every path asked for; can answer discovery slowly, so first uses overlap.
#[derive(Clone)]
pub struct Realms {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    known: Arc<Vec<String>>,
    asked: Arc<std::sync::Mutex<Vec<String>>>,
    delay: Arc<std::sync::atomic::AtomicU64>,
}

impl Realms {
    pub async fn start(known: &[&str]) -> Realms {
        use axum::extract::{Path, State};
        use axum::http::StatusCode;
        use axum::response::IntoResponse;
        use axum::routing::get;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let realms = Realms {
            base: format!("http://{}", listener.local_addr().expect("addr")),
            known: Arc::new(known.iter().map(|r| r.to_string()).collect()),
            asked: Arc::default(),
            delay: Arc::default(),
        };
        let app = axum::Router::new()
            .route(
                "/realms/{realm}/.well-known/openid-configuration",
                get(
                    |State(r): State<Realms>, Path(realm): Path<String>| async move {
                        r.record(format!("{realm} discovery"));
                        let delay = r.delay.load(std::sync::atomic::Ordering::Relaxed);
                        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                        if !r.known.contains(&realm) {
                            return StatusCode::NOT_FOUND.into_response();
                        }
                        axum::Json(json!({
                            "issuer": r.issuer(&realm),
                            "jwks_uri": format!("{}/certs", r.issuer(&realm)),
                        }))
                        .into_response()
                    },
                ),
            )
            .route(
                "/realms/{realm}/certs",
                get(
                    |State(r): State<Realms>, Path(realm): Path<String>| async move {
                        r.record(format!("{realm} keys"));
                        if !r.known.contains(&realm) {
                            return StatusCode::NOT_FOUND.into_response();
                        }
                        axum::Json(jwks(&[&realm_key(&realm)])).into_response()
                    },
                ),
            )
            .with_state(realms.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        realms
    }

    fn record(&self, what: String) {
        self.asked.lock().expect("lock").push(what);
    }

    /// Answers discovery after `ms` milliseconds from now on.
    pub fn slow_discovery(&self, ms: u64) {
        self.delay.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// The issuer of a realm.
    pub fn issuer(&self, realm: &str) -> String {
        format!("{}/realms/{realm}", self.base)
    }

    /// What was asked about `realm`, in order (`acme discovery`, `acme keys`).
    pub fn asked_for(&self, realm: &str) -> Vec<String> {
        let prefix = format!("{realm} ");
        self.asked
            .lock()
            .expect("lock")
            .iter()
            .filter(|a| a.starts_with(&prefix))
            .cloned()
            .collect()
    }

    /// Everything asked, in order.
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().expect("lock").clone()
    }

    /// A token of `realm` (signed with the realm's key) that passes otherwise, with `changes`
    /// as [`claims_with`] applies them.
    pub fn token(&self, realm: &str, changes: Value) -> String {
        self.token_signed_by(realm, realm, changes)
    }

    /// A token naming `realm` in `iss`, signed with the key of `signer`.
    pub fn token_signed_by(&self, realm: &str, signer: &str, changes: Value) -> String {
        let mut claims = claims_with(changes);
        claims["iss"] = json!(self.issuer(realm));
        realm_key(signer).mint(&claims).expect("mint")
    }
}

/// A fresh private CA and an https front on 127.0.0.1 with a certificate from it (for the
/// address 127.0.0.1), passing each connection's plaintext on to `backend`. Returns the CA
/// certificate (PEM) and the front's address.
pub async fn private_ca_https(backend: std::net::SocketAddr) -> (String, std::net::SocketAddr) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("leaf");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(leaf.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    (ca.pem(), addr)
}
